"""A non-editable install ships every package: pyproject.toml lists its packages by hand (``policies/`` is
mapped to ``stitchkit.policies``), so the list must name every folder of stitchkit/ that holds an
``__init__.py`` — a new family once ran in editable installs and was missing from wheels."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_on_disk_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "stitchkit").rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - on_disk == {"stitchkit.policies"}  # installed from policies/ (package-dir)
