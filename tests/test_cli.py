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
    assert "staticmask-30 (preset of hybridstitch, mask=static, sampler=50 steps at 768x768)" in out
    # the SRDiffusion variants with their defaults
    assert ("srdiffusion-fastvideo (preset of srdiffusion): threshold=0.01, rule=fastvideo, change=x0-prev, "
            "min_switch_step=5, max_switch_step=30") in out
    assert ("srdiffusion-xdit (preset of srdiffusion): threshold=0.01, rule=xdit, change=output, "
            "min_switch_step=5, max_switch_step=30") in out
    assert "srdiffusion-tanh-drop (preset of srdiffusion): threshold=0.005, rule=tanh-drop" in out


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

    from stitchkit.experiments import pictures as pic

    grid = Image.open(out / "grid.png")  # 3 methods x 2 prompts, 96 px cells with 2 px gaps, 120 px labels,
    captions = pic.caption_height(96, ["a red circle", "a blue square"])  # a title, captions under the columns
    assert grid.size == (120 + 2 * 96 + 2, pic.HEADER + 3 * 96 + 3 * 2 + captions)
    assert (out / "grid_prompts.txt").read_text() == "p0000\ta red circle\np0001\ta blue square\n"
    masks = Image.open(out / "masks.png")  # per prompt, hybridstitch-30's image, then one view per hybrid step
    record = json.loads((out / "records" / "hybridstitch-30" / "p0000-s0.json").read_text())
    hybrid_steps = [r["step"] for r in record["trace"] if 0 < r["mask_ratio"] < 1]
    assert [s for s, _ in record["masks"]["steps"]] == hybrid_steps
    views = min(len(hybrid_steps), pic.MASK_VIEWS)
    row = pic.LINE + 96 + 2 + pic.LINE + 4  # step numbers above, prompt below
    assert masks.size == (max(640, 160 + (1 + views) * 98 - 2), pic.HEADER + 2 * pic.LINE + 2 * row)  # + "left out"
    table = (out / "results.md").read_text()
    assert "| hybridstitch-30 |" in table and "| large | 2 |" in table
    for name in ("frontier.png", "switch_steps.png", "change.png", "config.resolved.yaml", "environment.json"):
        assert (out / name).exists(), name
    closing = first.stdout.strip().splitlines()[-1]
    assert closing.startswith("wrote ") and "/out/: results.md, results.csv, trace.jsonl, grid.png" in closing
    assert "masks.png, frontier.png, switch_steps.png, change.png" in closing and "/../" not in closing
    # every row records the sampler it ran with; the paper preset warned once that it is not the paper's
    assert record["sampler"] == {"steps": 4, "height": 64, "width": 64, "guidance_scale": 3.0}
    assert table.count("| 4 steps 64x64 cfg 3 |") == 3
    assert first.stderr.count("PresetSamplerWarning: hybridstitch-30: its thresholds are the paper's for 50 "
                              "steps at 768x768; this run uses 4 steps at 64x64") == 1
    assert record["threads"] == 1 and isinstance(record["load"], float)  # what the timings ran under
    # A rerun with everything done generates nothing: the record files are untouched.
    records = sorted((out / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    (records[-1]).unlink()  # ...except the one unit we remove
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0, second.stderr
    assert [p.stat().st_mtime_ns for p in records[:-1]] == stamps[:-1]
    assert records[-1].exists()
