"""diffusers' offload methods on a StitchPipeline: the hooks go on both transformers, the masked forward (which
calls the large model's submodules, not its forward) runs the large model's hooks, its K/V cache is made on
the execution device, and the images are those of the pipeline without offload. On a CPU the execution device
is the CPU itself, so this checks the plumbing; moving weights to and from a GPU is untested here."""

import copy

import pytest
import torch

from stitchkit import StitchPipeline
from stitchkit.models import offload

ARGS = dict(prompt="a cat", height=64, width=64, num_inference_steps=4, max_sequence_length=8,
            output_type="latent", switch={"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [0.3]},
            allow_unprofitable=True)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def fresh_pipe(tiny_pair):
    large, small = tiny_pair
    return StitchPipeline.from_pipelines(large=copy.deepcopy(large), small=copy.deepcopy(small))


@pytest.fixture
def counted_hooks(monkeypatch):
    """Counts offload_hooks entries per model class (the masked runners' calls)."""
    entered = []
    real = offload.offload_hooks

    def counting(model):
        entered.append(model)
        return real(model)

    for module in ("stitchkit.families.sd3.masked",):
        monkeypatch.setattr(f"{module}.offload_hooks", counting)
    return entered


def test_model_cpu_offload_hooks_both_transformers_and_the_masked_steps_follow_them(fresh_pipe, stitch_pipe,
                                                                                    monkeypatch):
    expected = stitch_pipe(**ARGS, generator=_gen(0))
    fresh_pipe.enable_model_cpu_offload(device="cpu")
    large, small = fresh_pipe.transformer, fresh_pipe.small_transformer
    assert hasattr(large, "_hf_hook") and hasattr(small, "_hf_hook")
    assert fresh_pipe._execution_device == torch.device("cpu", 0)
    # the chain: the small model's hook offloads the large one when the small model runs
    assert small._hf_hook.prev_module_hook.model is large
    calls = []
    real = large._hf_hook.pre_forward
    monkeypatch.setattr(large._hf_hook, "pre_forward", lambda module, *a, **k: (calls.append(module), real(module, *a, **k))[1])
    out = fresh_pipe(**ARGS, generator=_gen(0))
    stages = [r.stage for r in out.trace]
    assert stages == [0, 0, 1, 1]
    # two full large steps through forward, two masked steps through offload_hooks: four onloads of the large model
    assert len(calls) == 4 and all(m is large for m in calls)
    assert torch.equal(out.images, expected.images)
    assert fresh_pipe.masked_large.has_cache is False  # freed at the end of the generation
    fresh_pipe.remove_all_hooks()
    assert not hasattr(large, "_hf_hook") and not offload.has_offload_hooks(large)


def test_group_offload_at_block_level_gives_the_same_images(fresh_pipe, stitch_pipe, counted_hooks):
    expected = stitch_pipe(**ARGS, generator=_gen(1))
    fresh_pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                    offload_type="block_level", num_blocks_per_group=1)
    assert offload.has_offload_hooks(fresh_pipe.transformer) and offload.has_offload_hooks(fresh_pipe.small)
    assert offload._group_hook(fresh_pipe.transformer) is not None
    out = fresh_pipe(**ARGS, generator=_gen(1))
    assert [r.stage for r in out.trace] == [0, 0, 1, 1]
    assert counted_hooks.count(fresh_pipe.transformer) == 2  # each masked step entered the model's hooks
    assert torch.equal(out.images, expected.images)


class _Hook:
    """accelerate's hook interface (pre_forward/post_forward), counting."""

    def __init__(self):
        self.calls = []

    def pre_forward(self, module, *args, **kwargs):
        self.calls.append("pre")
        return args, kwargs

    def post_forward(self, module, output):
        self.calls.append("post")
        return output


def test_offload_hooks_run_around_the_call_also_on_error(tiny_pair):
    model = copy.deepcopy(tiny_pair[1])
    assert not offload.has_offload_hooks(model)
    with offload.offload_hooks(model):  # no hooks: nothing happens
        pass
    model._hf_hook = hook = _Hook()
    assert offload.has_offload_hooks(model)
    with pytest.raises(RuntimeError):
        with offload.offload_hooks(model):
            assert hook.calls == ["pre"]
            raise RuntimeError("boom")
    assert hook.calls == ["pre", "post"]
