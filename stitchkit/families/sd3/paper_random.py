"""``sd3-paper-random``: random-weight transformers built from the public SD3.5 Large and SD3 Medium configs,
inside an SD3 pipeline with tiny text encoders and VAE, for end-to-end latency at the paper's scale on a GPU.

Its pictures are noise and its D_t says nothing about quality; what it measures is time: every model call
has the real shapes (38 layers × 2432 and 24 × 1536, 333 text tokens, 16 latent channels, patch 2), so a
run's latency, speedup and the latency model's prediction are those of the real pair. It needs CUDA:
SD3.5 Large alone is 8 B parameters.
"""

from __future__ import annotations

import contextlib

import torch

COMMON = dict(patch_size=2, in_channels=16, out_channels=16, joint_attention_dim=4096, pooled_projection_dim=2048,
              sample_size=128, pos_embed_max_size=192)
#: Public transformer configs of stabilityai/stable-diffusion-3.5-large and stable-diffusion-3-medium.
SD35_LARGE = dict(COMMON, num_layers=38, num_attention_heads=38, attention_head_dim=64, caption_projection_dim=2432,
                  qk_norm="rms_norm")
SD3_MEDIUM = dict(COMMON, num_layers=24, num_attention_heads=24, attention_head_dim=64, caption_projection_dim=1536)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def random_transformer(config: dict, dtype: torch.dtype, device: torch.device):
    """A random-weight ``SD3Transformer2DModel`` made directly on ``device`` in ``dtype`` (no slow CPU init)."""
    from diffusers import SD3Transformer2DModel

    with device, _default_dtype(dtype):
        model = SD3Transformer2DModel(**config)
    return model.to(device=device, dtype=dtype).eval()


def build_paper_random_pair(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """``(large_pipeline, small_transformer)`` at the paper's scale; text encoders and VAE stay tiny."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from stitchkit.errors import ConfigError
    from stitchkit.families.sd3.tiny_random import tiny_text_encoder, tiny_tokenizer, tiny_vae

    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError("pair", "sd3-paper-random needs a CUDA device (SD3.5 Large has 8 B parameters)",
                          "run it on a GPU, or use tiny-random / bench-random on a CPU")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    # pooled_projection_dim 2048 = the two CLIP projections; joint_attention_dim 4096 >= their hidden sizes.
    encoders = [tiny_text_encoder(tokenizer, hidden_size=64, projection_dim=1024, seed=seed + i) for i in (1, 2)]
    pipeline = StableDiffusion3Pipeline(
        transformer=random_transformer(SD35_LARGE, dtype, device),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed + 5),
        text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tiny_tokenizer(),
        text_encoder_3=None, tokenizer_3=None,
    )
    pipeline.to(device=device, dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, random_transformer(SD3_MEDIUM, dtype, device)
