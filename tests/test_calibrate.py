"""`stitchkit calibrate`: D_t quantiles of large-only runs, hand-checked helpers."""

import textwrap

import numpy as np

from stitchkit.calibration.changes import first_step_below, srdiffusion_drops


def test_first_step_below_and_drops_by_hand():
    changes = np.array([[np.nan, 0.6, 0.4, 0.2], [np.nan, 0.9, 0.8, 0.7]])
    assert first_step_below(changes, 0.5).tolist() == [2, 4]  # the second run never falls below: steps
    drops = srdiffusion_drops(np.array([[0.5, 0.3, 0.2]]))
    assert np.isnan(drops[0, 0])
    assert np.allclose(drops[0, 1:], [np.tanh(0.5) - np.tanh(0.3), np.tanh(0.3) - np.tanh(0.2)])


def test_cli_prints_a_row_per_step(tmp_path, capsys):
    from stitchkit.cli import main

    exp = tmp_path / "e.yaml"
    exp.write_text(textwrap.dedent("""
        sampler: {steps: 5, height: 64, width: 64, max_sequence_length: 8}
        prompts: [a, b]
        seeds: [0, 1]
        methods: [large]
    """))
    assert main(["calibrate", str(exp), "--thresholds", "0.5", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tiny-random: 4 large-only runs, 5 steps"
    assert [line.split()[0] for line in out[3:8]] == ["0", "1", "2", "3", "4"]
    assert out[-1].startswith("x0 D_t < 0.5: first at step ")
