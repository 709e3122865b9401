"""The ``wan-tiny-random`` pair: a real ``WanPipeline`` (umT5 encoder, Wan VAE, the 2.1 checkpoints'
UniPC flow scheduler) around a 4-layer ``WanTransformer3DModel``, and a 2-layer one that fits it, built
offline from configs with seeded random weights (the text encoder's tokenizer is byte-level, made in
memory: no hub).

It runs every code path of the Wan family (CFG, 3-D rotary positions, the temporal VAE, the multistep
scheduler) in about a second per video on a CPU. Its videos are noise: use it for structure and equality.
The configs are those of diffusers' own Wan pipeline tests, with more layers and heads for the large model.
"""

from __future__ import annotations

import torch

#: The text tokens the tiny pipeline is called with in tests (WanPipeline's default is 512).
MAX_LENGTH = 16


def tiny_tokenizer():
    """A byte-level tokenizer with umT5's special tokens (pad 0, eos 1, unk 2), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {ch: i + 3 for i, ch in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def tiny_text_encoder(vocab_size: int, seed: int, d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(seed)
    return UMT5EncoderModel(config).eval()


def tiny_transformer(*, num_layers: int, heads: int, seed: int, head_dim: int = 12, ffn_dim: int = 32,
                     text_dim: int = 32):
    """A random ``WanTransformer3DModel`` with Wan 2.1's channel and patch layout (16 channels, 1×2×2)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn_dim, num_layers=num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def tiny_vae(seed: int):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def flow_scheduler():
    """The Wan 2.1 T2V checkpoints' scheduler: UniPC on flow sigmas, shift 3."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                   num_train_timesteps=1000)


def build_wan_tiny_random_pair(seed: int = 0):
    """``(large_pipeline, small_transformer)``: a tiny Wan pipeline (4 layers, 4 heads × 12) and a 2-layer,
    2-head transformer that fits it. Same seed, same weights, on every machine."""
    from diffusers import WanPipeline

    tokenizer = tiny_tokenizer()
    pipeline = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed + 1),
        vae=tiny_vae(seed + 2),
        scheduler=flow_scheduler(),
        transformer=tiny_transformer(num_layers=4, heads=4, ffn_dim=64, seed=seed + 3),
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, tiny_transformer(num_layers=2, heads=2, seed=seed + 4)
