"""The architecture as contracts: pyproject.toml's import-linter contracts (layers, policies on the plugin
contract only, no import circles) hold for the code as it is, every import counted, also those inside
functions. A change that breaks a layer fails here, naming the import chain."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def test_import_linter_contracts_hold():
    # From the repository root: `policies` is a root package of the contracts, found there.
    done = subprocess.run([sys.executable, "-c", RUN], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "Contracts: 4 kept" in done.stdout, done.stdout[-2000:]


def _top_level_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "stitchkit").glob("*.py"))


def test_the_top_level_holds_the_faces_and_the_contract_only():
    modules = _top_level_modules()
    assert len(modules) <= 14, modules
    for package in ("loop", "cost", "calibration", "pipeline"):
        assert (ROOT / "stitchkit" / package / "__init__.py").is_file(), package


def test_no_circle_among_stitchkit_modules_read_as_text():
    """Independent of import-linter: every ``import`` / ``from ... import`` in stitchkit/ and policies/,
    resolved to the module it names, gives a graph without cycles."""
    files = {}
    for base, package in (("stitchkit", "stitchkit"), ("policies", "stitchkit.policies")):
        for path in (ROOT / base).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / base).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    edges: dict[str, set[str]] = {}
    for name, (path, is_package) in files.items():
        here = name if is_package else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in names:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        edges[name] = targets
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(edges[module]):
            if seen.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in seen:
                visit(target, path + [target])
        seen[module] = 2

    for module in sorted(edges):
        if module not in seen:
            visit(module, [module])
