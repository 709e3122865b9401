"""``flux-paper-random``: random-weight transformers built from the public FLUX.1-dev and Flux.1 Lite 8B
configs, inside a FLUX pipeline with tiny text encoders and VAE, for end-to-end latency at full scale on a
GPU.

Its pictures are noise and its D_t says nothing about quality; what it measures is time: every model call
has the real shapes (19 double- + 38 single-stream blocks × 3072 for the large model, 8 + 38 for the small,
64 packed channels, 512 T5 tokens when called with ``max_sequence_length=512``), so a run's latency,
speedup and the latency model's prediction are those of the real pair. It needs CUDA: FLUX.1-dev alone
is 12 B parameters.
"""

from __future__ import annotations

import contextlib

import torch

COMMON = dict(patch_size=1, in_channels=64, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
              joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
#: Public transformer configs of black-forest-labs/FLUX.1-dev and Freepik/flux.1-lite-8B.
FLUX1_DEV = dict(COMMON, num_layers=19)
FLUX1_LITE_8B = dict(COMMON, num_layers=8)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def random_transformer(config: dict, dtype: torch.dtype, device: torch.device):
    """A random-weight ``FluxTransformer2DModel`` made directly on ``device`` in ``dtype`` (no slow CPU init)."""
    from diffusers import FluxTransformer2DModel

    with device, _default_dtype(dtype):
        model = FluxTransformer2DModel(**config)
    return model.to(device=device, dtype=dtype).eval()


def build_flux_paper_random_pair(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16,
                                 seed: int = 0):
    """``(large_pipeline, small_transformer)`` at FLUX.1-dev's scale; text encoders and VAE stay tiny."""
    from diffusers import FluxPipeline

    from stitchkit.errors import ConfigError
    from stitchkit.families.flux.tiny_random import (clip_tokenizer, flow_scheduler, t5_tokenizer, tiny_clip,
                                                     tiny_t5, tiny_vae)

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError("pair", "flux-paper-random needs a CUDA device (FLUX.1-dev has 12 B parameters)",
                          "run it on a GPU, or use flux-tiny-random on a CPU")
    torch.manual_seed(seed)
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    # pooled_projection_dim 768 = CLIP's width; joint_attention_dim 4096 = T5's.
    pipeline = FluxPipeline(
        scheduler=flow_scheduler(), vae=tiny_vae(seed + 1), text_encoder=tiny_clip(clip, seed + 2, hidden_size=768),
        tokenizer=clip, text_encoder_2=tiny_t5(len(t5), seed + 3, d_model=4096), tokenizer_2=t5,
        transformer=random_transformer(FLUX1_DEV, dtype, device),
    )
    pipeline.to(device=device, dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, random_transformer(FLUX1_LITE_8B, dtype, device)
