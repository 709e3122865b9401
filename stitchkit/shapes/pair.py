"""The ``shapes`` pair: a large and a small ``SD3Transformer2DModel`` drawing 32×32 captioned shapes in pixel
space, sharing one word-level tokenizer, one tiny ``CLIPTextModelWithProjection`` and one flow-match
scheduler. Trained by :mod:`stitchkit.shapes.train`; the trained pair ships in ``stitchkit/pairs/shapes/``
in diffusers' folder layout (``tokenizer/``, ``text_encoder/``, ``transformer_large/``,
``transformer_small/``, ``scheduler/``) and loads offline with :func:`load_shapes_pair`.

There is no VAE: the transformers see pixels directly (``in_channels = out_channels = 3``), patch 2, so a
32×32 picture is 16×16 = 256 image tokens, and the text is 16 tokens. Prompt embeddings are the text
encoder's last hidden state ``(B, 16, text_hidden)`` and its projected pooled output ``(B, projection)``;
classifier-free guidance uses the empty prompt as the negative one (the models were trained with 10% of
captions dropped to it).

>>> pair = build_pair(PairConfig(), seed=0)          # random weights, for structure only
>>> embeds, pooled = encode_prompts(pair, ["a small red circle at the center on a blue background", ""])
>>> embeds.shape, pooled.shape
(torch.Size([2, 16, 128]), torch.Size([2, 128]))
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

from stitchkit.errors import ConfigError
from stitchkit.shapes.world import vocabulary

#: Where the trained pair ships inside the package.
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "pairs" / "shapes"
#: The ladder's second rung (issue 21): the shipped large model with the stronger small trained alongside it.
PATH_1X160 = DEFAULT_PATH.parent / "shapes-1x160"
#: The shipped pairs of the shapes world by registered name: the ladder of pairs, every rung judged by the
#: same classifier (``shapes/classifier``) against the same large model.
SHIPPED_PAIRS = {"shapes": DEFAULT_PATH, "shapes-1x160": PATH_1X160}

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
COMPONENTS = ("tokenizer", "text_encoder", "transformer_large", "transformer_small", "scheduler")
#: Token budget of a prompt, ``<bos>`` and ``<eos>`` included (the longest caption needs 14).
MAX_LENGTH = 16
#: Guidance scale the shipped pair is measured at (see ``pair.json``).
DEFAULT_GUIDANCE = 3.0
DEFAULT_STEPS = 20


def _positive(instance, attribute, value: int) -> None:
    if value <= 0:
        raise ConfigError(attribute.name, f"must be positive, got {value}")


@attrs.frozen(kw_only=True)
class TransformerSize:
    """Depth and width of one ``SD3Transformer2DModel``: width = ``heads × head_dim``."""

    layers: int = attrs.field(validator=_positive)
    heads: int = attrs.field(validator=_positive)
    head_dim: int = attrs.field(default=32, validator=_positive)

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @property
    def name(self) -> str:
        """``"6x128"``: layers × width."""
        return f"{self.layers}x{self.width}"

    @classmethod
    def parse(cls, text: str, head_dim: int = 32) -> TransformerSize:
        """``"3x96"`` (layers × width, width a multiple of ``head_dim``) to a size."""
        try:
            layers, width = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise ConfigError("size", f"cannot parse {text!r}", "expected LAYERSxWIDTH, e.g. 3x96") from None
        if width % head_dim:
            raise ConfigError("size", f"width {width} is not a multiple of the head size {head_dim}")
        return cls(layers=layers, heads=width // head_dim, head_dim=head_dim)


@attrs.frozen(kw_only=True)
class PairConfig:
    """Everything that fixes the pair's architecture (not its weights)."""

    resolution: int = 32
    patch_size: int = 2
    #: 6 layers × 128 wide: 3.48 M parameters.
    large: TransformerSize = TransformerSize(layers=6, heads=4)
    #: 2 layers × 64 wide: 0.30 M parameters. Chosen by measurement: 3×96 (0.97 M), 2×96 and 1×160 drew
    #: too well (all-attributes accuracy within 5–19 points of the large model's) to leave the room for
    #: stitching to show; 2×64 draws the right colour, size and place with rough shapes.
    small: TransformerSize = TransformerSize(layers=2, heads=2)
    qk_norm: str | None = "rms_norm"
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_projection: int = 128
    shift: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairConfig:
        data = dict(data)
        for key in ("large", "small"):
            if isinstance(data.get(key), dict):
                data[key] = TransformerSize(**data[key])
        return cls(**data)


@attrs.frozen(kw_only=True)
class ShapesPair:
    """The loaded pair. ``large`` and ``small`` are ``SD3Transformer2DModel``s in pixel space."""

    tokenizer: Any
    text_encoder: Any
    large: Any
    small: Any
    scheduler: Any
    resolution: int = 32
    patch_size: int = 2

    @property
    def grid(self) -> tuple[int, int]:
        """Image tokens per side ``(rows, columns)``."""
        side = self.resolution // self.patch_size
        return side, side

    @property
    def device(self) -> torch.device:
        return next(self.large.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ShapesPair:
        args = {"device": device} if dtype is None else {"device": device, "dtype": dtype}
        for model in (self.text_encoder, self.large, self.small):
            model.to(**args)
        return self

    def save(self, path: str | os.PathLike, *, dtype: torch.dtype = torch.float16,
             metadata: dict[str, Any] | None = None) -> Path:
        """Write the pair in diffusers' folder layout (weights as safetensors in ``dtype``) plus
        ``pair.json``. Each component is written into a temporary folder and renamed into place, so a
        reader never sees half a component; other entries of ``path`` (the classifier) are left alone."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".saving.", dir=path))
        try:
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            for name, model in (("text_encoder", self.text_encoder), ("transformer_large", self.large),
                                ("transformer_small", self.small)):
                _save_model(model, tmp / name, dtype)
            self.scheduler.save_pretrained(tmp / "scheduler")
            for name in COMPONENTS:
                _replace_dir(tmp / name, path / name)
            info = {"resolution": self.resolution, "patch_size": self.patch_size, "max_length": MAX_LENGTH,
                    "guidance": DEFAULT_GUIDANCE, "steps": DEFAULT_STEPS, **(metadata or {})}
            (tmp / "pair.json").write_text(json.dumps(info, indent=2) + "\n")
            os.replace(tmp / "pair.json", path / "pair.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path


def _save_model(model, folder: Path, dtype: torch.dtype) -> None:
    """``save_pretrained`` in ``dtype`` without changing the live model's dtype."""
    original = next(model.parameters()).dtype
    model.to(dtype)
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        model.to(original)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing ``dst``; a reader sees the old or the new, never half."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- building the components offline ---------------------------------------------------------------------

def build_tokenizer(max_length: int = MAX_LENGTH):
    """A word-level ``PreTrainedTokenizerFast`` over the world's closed vocabulary: ``<bos> words <eos>``,
    padded with ``<pad>``; unknown words map to ``<unk>``. ``<eos>`` is id 3 (CLIP's text model treats
    ``eos_token_id == 2`` as a legacy case and pools the arg-max token id instead)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *vocabulary()))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=max_length,
    )


def build_text_encoder(config: PairConfig, tokenizer):
    """A random tiny ``CLIPTextModelWithProjection`` for ``tokenizer`` (seed it with ``torch.manual_seed``)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=2 * config.text_hidden,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=config.text_projection,
        hidden_act="gelu",
        # CLIPTextConfig defaults to eos 49407: without these every prompt pools position 0 (NOTES-sd3.md).
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(text_config)


def build_transformer(config: PairConfig, size: TransformerSize):
    """A random pixel-space ``SD3Transformer2DModel`` of ``size`` (seed it with ``torch.manual_seed``)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=config.resolution,
        patch_size=config.patch_size,
        in_channels=3,
        out_channels=3,
        num_layers=size.layers,
        attention_head_dim=size.head_dim,
        num_attention_heads=size.heads,
        joint_attention_dim=config.text_hidden,
        caption_projection_dim=size.width,
        pooled_projection_dim=config.text_projection,
        pos_embed_max_size=config.resolution // config.patch_size,
        qk_norm=config.qk_norm,
    )


def build_scheduler(config: PairConfig):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.shift)


def seed_for(seed: int, name: str) -> int:
    """A seed per component, so adding or removing one component leaves the others' weights unchanged."""
    return (seed * 1_000_003 + sum((i + 1) * ord(ch) for i, ch in enumerate(name))) % (2**63)


def build_pair(config: PairConfig = PairConfig(), seed: int = 0) -> ShapesPair:
    """The pair with seeded random weights (the starting point of training)."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed_for(seed, "text_encoder"))
    text_encoder = build_text_encoder(config, tokenizer)
    torch.manual_seed(seed_for(seed, "large"))
    large = build_transformer(config, config.large)
    torch.manual_seed(seed_for(seed, f"small_{config.small.name}"))
    small = build_transformer(config, config.small)
    return ShapesPair(tokenizer=tokenizer, text_encoder=text_encoder.eval(), large=large.eval(),
                      small=small.eval(), scheduler=build_scheduler(config), resolution=config.resolution,
                      patch_size=config.patch_size)


def component_folders(path: Path, info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Each component's folder: in ``path`` itself, else in the pair its ``pair.json`` names as ``shares``
    (a relative folder). A rung of the ladder of pairs (``shapes-1x160``) ships only its own small model and
    shares the large model, text encoder, tokenizer, scheduler and judge with ``shapes``, so the two rungs
    run the very same large model."""
    if info is None:
        info = json.loads((path / "pair.json").read_text()) if (path / "pair.json").is_file() else {}
    shared = (path / info["shares"]).resolve() if info.get("shares") else None
    folders = {}
    for name in COMPONENTS:
        own = path / name
        folders[name] = own if own.is_dir() or shared is None else shared / name
        if not folders[name].is_dir():
            raise ConfigError("pair.path", f"no shapes pair at {path}: {name}/ is missing"
                              + (f" (also from {shared})" if shared is not None else ""),
                              "expected tokenizer/, text_encoder/, transformer_large/, transformer_small/, "
                              "scheduler/ (or a pair.json whose \"shares\" names the folder holding the rest)")
    return folders


def is_pair_folder(path: str | os.PathLike) -> bool:
    """``path`` holds a shapes pair: both transformers, or a ``pair.json`` sharing the rest from another."""
    path = Path(path)
    if (path / "transformer_large").is_dir():
        return True
    try:
        component_folders(path)
    except (ConfigError, OSError, ValueError, KeyError):
        return False
    return (path / "pair.json").is_file()


def load_shapes_pair(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> ShapesPair:
    """Load a saved pair (by default the shipped one) offline, in ``dtype``, in eval mode."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

    path = Path(path) if path is not None else DEFAULT_PATH
    info = json.loads((path / "pair.json").read_text()) if (path / "pair.json").is_file() else {}
    folders = component_folders(path, info)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folders["tokenizer"], local_files_only=True)
    text_encoder = CLIPTextModelWithProjection.from_pretrained(folders["text_encoder"], local_files_only=True,
                                                               dtype=dtype)
    # low_cpu_mem_usage=False: the models are tiny, and it spares a warning where accelerate is missing.
    large = SD3Transformer2DModel.from_pretrained(folders["transformer_large"], local_files_only=True,
                                                  torch_dtype=dtype, low_cpu_mem_usage=False)
    small = SD3Transformer2DModel.from_pretrained(folders["transformer_small"], local_files_only=True,
                                                  torch_dtype=dtype, low_cpu_mem_usage=False)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folders["scheduler"], local_files_only=True)
    patch_size = int(large.config.patch_size)
    pair = ShapesPair(tokenizer=tokenizer, text_encoder=text_encoder.eval(), large=large.eval(),
                      small=small.eval(), scheduler=scheduler,
                      resolution=int(info.get("resolution", large.config.sample_size)), patch_size=patch_size)
    return pair.to(device)


def tokenize(tokenizer, prompts: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Token ids ``(B, MAX_LENGTH)``, padded; over-long prompts are cut (keeping ``<eos>``)."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)


def encode_tokens(text_encoder, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds (B, T, hidden), pooled (B, projection))`` from token ids."""
    out = text_encoder(input_ids=input_ids)
    return out.last_hidden_state, out.text_embeds


@torch.no_grad()
def encode_prompts(pair: ShapesPair, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds (B, 16, hidden), pooled (B, projection))`` for ``prompts``, on the pair's device.
    For classifier-free guidance encode ``[""] * B`` as the negative prompts."""
    if isinstance(prompts, str):
        raise ConfigError("prompts", "a single string was given", "pass a list of prompts")
    ids = tokenize(pair.tokenizer, prompts, device=next(pair.text_encoder.parameters()).device)
    return encode_tokens(pair.text_encoder, ids)
