"""Every python code block of the README runs as written, in order.

A block whose first line is ``# NAME.py`` (or ``# NAME.py (continued)``) is a file of the reader's own
package: it is written (appended) to ``NAME.py`` in a temporary folder on ``sys.path``; every other block is
executed there. A block that cannot run offline on a CPU says so in its fence, ```` ```python skip-test: why
````, and is reported as skipped with that reason, never silently. The toml block's entry point must name a
module the README writes.
"""

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)
MODULE = re.compile(r"#\s*([A-Za-z_]\w*)\.py\b")


def _blocks(language):
    return [(info.strip(), code) for lang, info, code in FENCE.findall(README.read_text()) if lang == language]


PYTHON = _blocks("python")


def test_the_readme_has_python_blocks_and_every_skip_gives_a_reason():
    assert len(PYTHON) >= 6
    for info, _ in PYTHON:
        assert info == "" or re.fullmatch(r"skip-test: \S.*", info), info
    assert sum(bool(info) for info, _ in PYTHON) <= 2  # a small, visible allowlist


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    info, _ = PYTHON[index]
    if info:
        pytest.skip(f"README block {index}: {info}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = set()
    try:
        for info, code in PYTHON[:index + 1]:  # the reader's files as they stand at this block
            if info:
                continue
            match = MODULE.match(code.lstrip().splitlines()[0])
            if match:
                modules.add(match.group(1))
                with open(tmp_path / f"{match.group(1)}.py", "a") as f:
                    f.write(code + "\n")
        info, code = PYTHON[index]
        match = MODULE.match(code.lstrip().splitlines()[0])
        if match:
            __import__(match.group(1))  # a file block must at least import
        else:
            exec(compile(code, f"README.md block {index}", "exec"), {"__name__": f"readme_block_{index}"})
    finally:
        for name in modules:
            sys.modules.pop(name, None)


def test_the_toml_entry_point_names_a_module_the_readme_writes():
    modules = {m.group(1) for _, code in PYTHON if (m := MODULE.match(code.lstrip().splitlines()[0]))}
    (toml,) = [code for _, code in _blocks("toml")]
    section = toml.split("[project.entry-points.stitchkit]", 1)[1]  # tomllib is 3.11+; the project is 3.10+
    entry_points = re.findall(r'^\s*[\w-]+\s*=\s*"([\w.]+)"', section, re.M)
    assert entry_points and set(entry_points) <= modules
