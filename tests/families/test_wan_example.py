"""examples/wan_t2v.py runs (on the tiny pair) and writes what its docstring promises."""

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wan_t2v.py"


def test_the_wan_example_runs_on_the_tiny_pair(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="MP4 output needs imageio-ffmpeg (the `wan` extra)")
    spec = importlib.util.spec_from_file_location("wan_t2v_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    traces = module.main(["--pair", "wan-tiny-random", "--height", "32", "--width", "48", "--frames", "9",
                          "--steps", "4", "--max-sequence-length", "16", "--methods", "large,hybridstitch-30",
                          "--out", str(tmp_path)])
    assert set(traces) == {"large", "hybridstitch-30"}
    for name in traces:
        assert (tmp_path / f"{name}.mp4").stat().st_size > 0 and (tmp_path / f"{name}-frames.png").exists()
    assert (tmp_path / "hybridstitch-30-mask.png").exists() and not (tmp_path / "large-mask.png").exists()
    assert json.loads((tmp_path / "trace.json").read_text())["large"]["steps"][0]["num_tokens"] == 18
