"""torch.compile of a stitched pair (stitchkit.pipeline.compile): regional compilation of both transformers,
whole graphs through the K/V processors, no recompilation after the first generation, outputs as eager.

The generations compile with ``backend="eager"``: dynamo traces, guards and replays the processors' cache
writes exactly as with inductor (so its graph counts are the ones a user gets), and the captured graphs run
as they were traced, without inductor's C++ build (minutes per graph on 2 shared cores; ``aot_eager``
doubled this test's time). ``benchmarks/compile.py`` runs inductor itself and checks its outputs against
eager.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from stitchkit import ConfigError, StitchPipeline
from stitchkit.families.flux.tiny_random import MAX_LENGTH, build_flux_tiny_random_pair
from stitchkit.families.sd3.tiny_random import build_tiny_random_pair
from stitchkit.pipeline.compile import check_options, compile_pair, repeated_block_classes

ARGS = dict(prompt=["a red circle"], height=64, width=96, num_inference_steps=4, guidance_scale=3.5,
            max_sequence_length=MAX_LENGTH, output_type="latent")


def _hybrid(ratio):
    return {"kind": "hybridstitch", "thresholds": [1e9, 1e-12], "mask_ratios": [ratio]}


def _compiled_blocks(model):
    return [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]


def test_the_repeated_blocks_are_diffusers_own_or_the_module_lists():
    flux_large, flux_small = build_flux_tiny_random_pair(seed=0)
    assert repeated_block_classes(flux_large.transformer) == ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    sd3_large, _ = build_tiny_random_pair(seed=0)
    # SD3Transformer2DModel declares no _repeated_blocks in diffusers 0.42.1: its ModuleList's blocks.
    assert not getattr(sd3_large.transformer, "_repeated_blocks", None)
    assert repeated_block_classes(sd3_large.transformer) == ("JointTransformerBlock",)
    compiled = compile_pair([sd3_large.transformer, flux_small], backend="eager")
    assert compiled == {"SD3Transformer2DModel": len(sd3_large.transformer.transformer_blocks),
                        "FluxTransformer2DModel": 2}
    assert len(_compiled_blocks(sd3_large.transformer)) == len(sd3_large.transformer.transformer_blocks)
    assert len(_compiled_blocks(flux_small)) == 2  # one double-stream and one single-stream block


def test_options_are_checked_with_one_line():
    with pytest.raises(ConfigError, match=r"compile\.fulgraph: is not a torch.compile option"):
        check_options({"fulgraph": True})
    assert check_options({"mode": "max-autotune-no-cudagraphs"}) == {
        "fullgraph": True, "dynamic": True, "mode": "max-autotune-no-cudagraphs"}


@pytest.mark.slow  # about 20-40 s on 2 shared cores: dynamo traces ten graphs
def test_a_compiled_generation_equals_eager_and_recompiles_nothing_after_the_first():
    torch.set_num_threads(1)
    large, small = build_flux_tiny_random_pair(seed=0)
    pipe = StitchPipeline.from_pipelines(large=large, small=small)

    def generate(ratio, seed):
        return pipe(**ARGS, generator=torch.Generator().manual_seed(seed), switch=_hybrid(ratio))

    eager = {(r, s): generate(r, s).images for r, s in ((0.3, 0), (0.5, 1))}
    torch._dynamo.reset()
    pipe.compile_repeated_blocks(backend="eager")
    assert len(_compiled_blocks(pipe.transformer)) == 4 and len(_compiled_blocks(pipe.small_transformer)) == 2

    counters.clear()
    first = generate(0.3, 0)  # warm-up: compiles each block kind for every mode it meets
    warm_graphs = counters["stats"]["unique_graphs"]
    assert warm_graphs > 0, "nothing was compiled"
    assert [r.stage for r in first.trace] == [0, 0, 1, 1]  # full steps (recording), then masked ones

    counters.clear()
    second = generate(0.5, 1)  # another mask ratio (another token count) and seed
    assert counters["stats"]["unique_graphs"] == 0, f"recompiled {counters['stats']['unique_graphs']} graphs"
    assert second.trace[-1].large_tokens == round(0.5 * 24) and first.trace[-1].large_tokens == round(0.3 * 24)

    assert (first.images - eager[0.3, 0]).abs().max() <= 1e-5
    assert (second.images - eager[0.5, 1]).abs().max() <= 1e-5
    assert (second.images - first.images).abs().max() > 1e-3  # the runs differ: the check can fail
