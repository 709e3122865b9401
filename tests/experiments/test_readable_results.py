"""Readable results (issue 24): change.png draws each method's own measure with its thresholds, Fréchet-type
metrics are marked unreliable below their stated image count (in results.md and frontier.png)."""

import textwrap

from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.metrics.fid import FID
from stitchkit.experiments.metrics.shapes import Frechet
from stitchkit.experiments.plots import _policy_marks
from stitchkit.experiments.reliability import reliability_notes, unreliable


def test_each_method_is_marked_with_its_own_measure_and_thresholds(tmp_path):
    (tmp_path / "e.yaml").write_text(textwrap.dedent("""
        pair: tiny-random
        prompts: [a red circle]
        methods:
          - large
          - srdiffusion
          - {name: sr-paper, switch: {kind: srdiffusion, rule: paper, threshold: 0.02}}
          - {name: hs, switch: {kind: hybridstitch-30, thresholds: [0.15, 0.05]}}
    """))
    config = ExperimentConfig.from_yaml(tmp_path / "e.yaml")
    assert _policy_marks(config, "hs") == ("x0", (0.15, 0.05), "")
    measure, levels, note = _policy_marks(config, "srdiffusion")
    assert measure != "x0" and levels == () and "tanh" in note  # fastvideo's rule: a drop, not a level
    assert _policy_marks(config, "sr-paper")[1:] == ((0.02,), "")
    assert _policy_marks(config, "large") == ("x0", (), "")


def test_frechet_metrics_are_marked_unreliable_below_their_image_count():
    assert Frechet.min_images == 200 and FID.min_images == 2048
    assert unreliable(Frechet, 16) == "unreliable below 200 images (16 here)"
    assert unreliable(Frechet, 200) is None and unreliable(object(), 1) is None
    notes = reliability_notes({"frechet": Frechet, "fid": FID}, 500)
    assert notes == ["FID: unreliable below 2048 images (500 here)"]
