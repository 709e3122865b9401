"""The console script: one-line refusals with exit code 2, and the run/plugins commands end to end."""

import json
import os
import subprocess
import sys
import textwrap

from stitchkit.cli import main


def test_bad_yaml_value_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("prompts: [x]\nmethods:\n  - large\n  - {switch: {kind: hybridstitch, thresholds: [0.3, 0.5],"
                    " mask_ratios: [0.3]}, name: h}\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stitchkit run: error: methods[1].switch.thresholds:")
    assert "\n" not in err and "Traceback" not in err


def test_missing_argument_is_one_line(capsys):
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stitchkit run: error: Missing argument") and "\n" not in err


def test_plugins_lists_policies_with_defaults_and_origin(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "t-stitch: small_fraction=0.4" in out
    assert "hybridstitch-30 (preset of hybridstitch" in out and "[stitchkit (built-in)]" in out
    assert "staticmask-30 (preset of hybridstitch, mask=static)" in out


def test_run_writes_images_trace_and_table_and_resumes(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(textwrap.dedent("""
        pair: tiny-random
        sampler: {steps: 4, guidance_scale: 3, height: 64, width: 64, max_sequence_length: 8}
        prompts: [a red circle, a blue square]
        seeds: [0]
        methods: [large, t-stitch, hybridstitch-30]
        output: out
    """))
    cmd = [sys.executable, "-m", "stitchkit.cli", "run", str(exp), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as the suite: one thread
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "images" / "t-stitch").iterdir()) == ["p0000-s0.png", "p0001-s0.png"]
    lines = (out / "trace.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2 * 4
    assert {"method", "step", "stage", "large_tokens", "change", "large_ms"} <= set(json.loads(lines[0]))
    from PIL import Image

    grid = Image.open(out / "grid.png")  # 3 methods x 2 prompts, 96 px cells with 2 px gaps, 120 px labels
    assert grid.size == (120 + 2 * 96 + 2, 3 * 96 + 2 * 2)
    masks = Image.open(out / "masks.png")  # one row: hybridstitch-30's image, then one view per hybrid step
    record = json.loads((out / "records" / "hybridstitch-30" / "p0000-s0.json").read_text())
    hybrid_steps = [r["step"] for r in record["trace"] if 0 < r["mask_ratio"] < 1]
    assert [s for s, _ in record["masks"]["steps"]] == hybrid_steps
    assert masks.size == (120 + (1 + len(hybrid_steps)) * 98 - 2, 96)
    table = (out / "results.md").read_text()
    assert "| hybridstitch-30 |" in table and "| large | 2 |" in table
    assert record["threads"] == 1 and isinstance(record["load"], float)  # what the timings ran under
    # A rerun with everything done generates nothing: the record files are untouched.
    records = sorted((out / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    (records[-1]).unlink()  # ...except the one unit we remove
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert [p.stat().st_mtime_ns for p in records[:-1]] == stamps[:-1]
    assert records[-1].exists()
