"""The ``tiny-random`` pair: a real ``StableDiffusion3Pipeline`` and a smaller ``SD3Transformer2DModel``,
built offline from configs with seeded random weights.

It exercises every code path of the SD3 family (two CLIP encoders, the zero T5 padding, the VAE, CFG,
the flow-match scheduler) in well under a second per image on a CPU, so tests and smoke runs never touch
the network. Its pictures are noise: use it for structure and equality, the ``shapes`` pair for quality.
"""

from __future__ import annotations

import torch

#: Token budget of the tiny CLIP tokenizer (SD3's CLIP encoders use 77).
MAX_LENGTH = 77


def _byte_characters() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table, as CLIP's tokenizer)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
    return [table[b] for b in range(256)]


def _byte_vocab() -> dict[str, int]:
    """A byte-level BPE vocabulary with every byte character and its ``</w>`` form, and no merges."""
    chars = _byte_characters()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def tiny_tokenizer():
    """A CLIPTokenizer over raw bytes (no merges), built in memory: no files, no hub."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_byte_vocab(), merges=[], model_max_length=MAX_LENGTH)


def tiny_text_encoder(tokenizer, hidden_size: int, projection_dim: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=projection_dim,
        # CLIPTextConfig defaults to eos 49407: without these every prompt pools position 0 (NOTES-sd3.md).
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config).eval()


def tiny_transformer(*, num_layers: int, heads: int, head_dim: int = 8, seed: int, sample_size: int = 16,
                     joint_attention_dim: int = 32, pooled_projection_dim: int = 32, qk_norm: str | None = None,
                     dual_attention_layers: tuple[int, ...] = ()):
    """A random ``SD3Transformer2DModel`` with SD3's channel and patch layout (16 channels, patch 2)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    model = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_attention_dim,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=pooled_projection_dim,
        pos_embed_max_size=2 * sample_size,
        qk_norm=qk_norm,
        dual_attention_layers=dual_attention_layers,
    )
    # diffusers zero-initialises nothing here, but AdaLN-Zero style models can come out near-identity;
    # random weights of unit scale keep the two models' predictions visibly different.
    return model.eval()


def tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=128,
        shift_factor=0.0609,
        scaling_factor=1.5305,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def build_tiny_random_pair(seed: int = 0):
    """``(large_pipeline, small_transformer)``: a tiny SD3 pipeline (4-layer transformer) and a 2-layer
    transformer that fits it. Same seed, same weights, on every machine."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tokenizer = tiny_tokenizer()
    # pooled_projection_dim = sum of the two CLIP projection dims; joint_attention_dim >= sum of hidden sizes.
    text_encoder = tiny_text_encoder(tokenizer, hidden_size=16, projection_dim=16, seed=seed + 1)
    text_encoder_2 = tiny_text_encoder(tokenizer, hidden_size=16, projection_dim=16, seed=seed + 2)
    large = tiny_transformer(num_layers=4, heads=4, seed=seed + 3)
    small = tiny_transformer(num_layers=2, heads=2, seed=seed + 4)
    pipeline = StableDiffusion3Pipeline(
        transformer=large,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed + 5),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, small


def build_bench_random_pair(seed: int = 0):
    """``bench-random``: the tiny pipeline's encoders and VAE around the masked-forward benchmark's
    transformers (12 layers 6×64 and 6 layers 4×64; 512² px = 64×64 latents = 1024 tokens). Model calls
    dominate a step here, so it is where the latency model's predictions are held against measurements
    on a CPU."""
    pipeline, _ = build_tiny_random_pair(seed)
    pipeline.register_modules(transformer=tiny_transformer(num_layers=12, heads=6, head_dim=64, sample_size=64,
                                                           seed=seed + 6))
    small = tiny_transformer(num_layers=6, heads=4, head_dim=64, sample_size=64, seed=seed + 7)
    return pipeline, small
