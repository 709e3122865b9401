"""The experiment side is a layer above the loop: the engine, pipeline, policies, models and model families never
import ``stitchkit.experiments``, not even when they build the plugin registry."""

import os
import subprocess
import sys

CODE = r"""
import sys
import stitchkit.loop.engine, stitchkit.pipeline, stitchkit.families.sd3, stitchkit.families.shapes
import stitchkit.families.wan, stitchkit.families.sd3.masked, stitchkit.tokens
from stitchkit.registry import DEFAULT_PLUGINS, get_registry
registry = get_registry(entry_points=False)
registry.names("switch"); registry.create("switch", "hybridstitch-30"); registry.create("mask", "static")
loaded = sorted(m for m in sys.modules if m.startswith("stitchkit.experiments"))
assert not loaded, loaded
assert "caption_accuracy" in registry.names("metric")  # metrics are there when asked for
print("ok")
"""


def test_the_loop_never_imports_the_experiment_package():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_pictures_and_runner_do_not_import_each_other():
    from pathlib import Path

    import stitchkit.experiments as pkg

    folder = Path(pkg.__file__).parent
    assert "stitchkit.experiments.runner" not in (folder / "pictures.py").read_text()
    assert "stitchkit.experiments.pictures" not in (folder / "runner.py").read_text()
