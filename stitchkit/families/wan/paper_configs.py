"""The public transformer configs of Wan-AI/Wan2.1-T2V-14B-Diffusers and Wan-AI/Wan2.1-T2V-1.3B-Diffusers,
and random-weight transformers built from them directly on a device (for latency at the real scale on a
GPU: the 14B model alone is 28 GB in bf16)."""

from __future__ import annotations

import contextlib

import torch

COMMON = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
              cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN21_14B = dict(COMMON, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
WAN21_1_3B = dict(COMMON, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
#: 480p × 81 frames: latents 21 × 60 × 104 (VAE 4× in time, 8× in space), tokens 21 × 30 × 52 = 32,760.
LATENT_480P_81 = (21, 60, 104)
#: umT5 tokens WanPipeline hands the transformer (its max_sequence_length).
TEXT_TOKENS = 512


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def random_transformer(config: dict, dtype: torch.dtype, device: torch.device | str):
    """A random-weight ``WanTransformer3DModel`` made directly on ``device`` in ``dtype``."""
    from diffusers import WanTransformer3DModel

    device = torch.device(device)
    with device, _default_dtype(dtype):
        model = WanTransformer3DModel(**config)
    return model.to(device=device, dtype=dtype).eval()
