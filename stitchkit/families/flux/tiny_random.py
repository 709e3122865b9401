"""The ``flux-tiny-random`` pair: a real ``FluxPipeline`` (CLIP + T5 encoders, FLUX's VAE scaling and
shift, the dynamically shifted flow-match scheduler) around a ``FluxTransformer2DModel`` with two
double-stream and two single-stream blocks, and one with one of each that fits it, built offline from
configs with seeded random weights (the tokenizers are made in memory: no hub).

It runs every code path of the FLUX family (distilled guidance, true CFG, packing, 3-axis rotary
positions over text and image ids) in well under a second per image on a CPU. Its pictures are noise:
use it for structure and equality.
"""

from __future__ import annotations

import torch

from stitchkit.families.sd3.tiny_random import MAX_LENGTH as CLIP_LENGTH
from stitchkit.families.sd3.tiny_random import tiny_tokenizer as clip_tokenizer
from stitchkit.families.wan.tiny_random import tiny_tokenizer as t5_tokenizer

#: The T5 tokens the tiny pipeline is called with in tests (FluxPipeline's default is 512).
MAX_LENGTH = 16
#: Width of the tiny CLIP (its pooled output is the transformer's pooled projection) and of the tiny T5.
CLIP_DIM, T5_DIM = 32, 32


def tiny_clip(tokenizer, seed: int, hidden_size: int = CLIP_DIM):
    """A random ``CLIPTextModel`` (FLUX reads its ``pooler_output``: no projection) for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=CLIP_LENGTH,
        # CLIPTextConfig defaults to eos 49407: without these every prompt pools position 0 (NOTES-sd3.md).
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def tiny_t5(vocab_size: int, seed: int, d_model: int = T5_DIM):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_transformer(*, num_layers: int, num_single_layers: int, heads: int, seed: int, head_dim: int = 16,
                     joint_attention_dim: int = T5_DIM, pooled_projection_dim: int = CLIP_DIM):
    """A random ``FluxTransformer2DModel`` with FLUX.1-dev's layout (16 latent channels packed 2×2 into 64,
    guidance embedding, rotary axes over (0, row, column))."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=pooled_projection_dim, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ).eval()


def tiny_vae(seed: int):
    """A tiny 16-channel ``AutoencoderKL`` with FLUX.1's latent scaling and shift (8× downsampling)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=16, norm_num_groups=4, sample_size=128, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def flow_scheduler():
    """FLUX.1-dev's scheduler: flow-match Euler, shift resolved per image size (``use_dynamic_shifting``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)


def build_flux_tiny_random_pair(seed: int = 0):
    """``(large_pipeline, small_transformer)``: a tiny FLUX pipeline (2 double + 2 single blocks, 4 heads × 16)
    and a transformer with 1 + 1 blocks and 2 heads that fits it. Same seed, same weights, on every machine."""
    from diffusers import FluxPipeline

    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    pipeline = FluxPipeline(
        scheduler=flow_scheduler(), vae=tiny_vae(seed + 1), text_encoder=tiny_clip(clip, seed + 2),
        tokenizer=clip, text_encoder_2=tiny_t5(len(t5), seed + 3), tokenizer_2=t5,
        transformer=tiny_transformer(num_layers=2, num_single_layers=2, heads=4, seed=seed + 4),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, tiny_transformer(num_layers=1, num_single_layers=1, heads=2, seed=seed + 5)
