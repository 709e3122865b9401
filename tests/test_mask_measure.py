"""``mask_measure``: the mask's change map may come from another measure than the switch's D_t."""

import pytest
import torch

from stitchkit.loop.change import MEASURES
from stitchkit.errors import ConfigError
from stitchkit.policies.hybridstitch import HybridStitch

ARGS = dict(prompt=["a red circle"], height=128, width=128, num_inference_steps=4, guidance_scale=4.0,
            max_sequence_length=8, output_type="latent")


def _run(stitch_pipe, **switch):
    steps = []
    out = stitch_pipe(**ARGS, generator=torch.Generator().manual_seed(0),
                      switch={"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3], **switch},
                      callback=steps.append)
    return out, steps


@pytest.mark.parametrize(("mask_measure", "expected"), [(None, "x0"), ("latent", "latent"), ("output", "output")])
def test_change_map_comes_from_the_mask_measure(stitch_pipe, mask_measure, expected):
    out, steps = _run(stitch_pipe, change="x0", mask_measure=mask_measure)
    previous = None
    for step, record in zip(steps, out.trace):
        change, _ = MEASURES["x0"](previous, step["tensors"], 2)
        _, want_map = MEASURES[expected](previous, step["tensors"], 2)
        # D_t (the switch's, in the trace) is always x0's; the map is the mask measure's
        assert (record.change is None) == (change is None)
        if change is not None:
            assert record.change == pytest.approx(float(change.max()))
        if want_map is None:
            assert step["change_map"] is None
        else:
            torch.testing.assert_close(step["change_map"], want_map)
        previous = step["tensors"]


def test_latent_and_x0_maps_differ_so_the_test_above_can_fail(stitch_pipe):
    _, steps = _run(stitch_pipe, change="x0")
    _, x0_map = MEASURES["x0"](steps[1]["tensors"], steps[2]["tensors"], 2)
    _, latent_map = MEASURES["latent"](steps[1]["tensors"], steps[2]["tensors"], 2)
    assert not torch.allclose(x0_map, latent_map)


def test_mask_measure_defaults_to_the_change_measure_and_is_validated():
    assert HybridStitch().mask_measure is None
    with pytest.raises(ConfigError, match="mask_measure: unknown change measure 'eps'"):
        HybridStitch(mask_measure="eps")
