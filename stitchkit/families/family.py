"""What a model family is to stitchkit: the one object through which the engine and the pipeline reach a
family's models, so that neither ever names one.

A family (SD3, the shapes pair, Wan 2.1, or one an outside package adds) is registered through the
``register_model_families`` hook, exactly like a policy::

    @stitchkit.hookimpl
    def register_model_families(register):
        register(Family(name="mine", accepts_pipeline=..., accepts_transformer=..., adapter=...,
                        masked_runner=..., forward=..., check_pair=..., load=...))

It brings two things: a **pipeline adapter** (``adapter(pipeline)``: encode prompts, prepare latents, the
timesteps, the token grid's patch size, decode; see :class:`Adapter`) and a **masked runner** for its
transformer class (``masked_runner(transformer)``: the record / masked K/V forwards of Algorithm 1, lines 6
and 10; see :class:`stitchkit.protocols.ContextProvider` for how policies call it). ``forward`` is the
stock transformer call on :class:`~stitchkit.protocols.ModelInputs`; ``check_pair`` refuses two
transformers that cannot share latents and text; ``flops`` is the FLOP model the latency checks fall back
to without a profile (Eq. 6-8); ``load`` builds ``(large pipeline, small transformer)`` from two
checkpoints for :meth:`stitchkit.StitchPipeline.from_pretrained`, which picks the family by the
checkpoint's pipeline class (``model_index.json``'s ``_class_name``, matched against
``pipeline_class_names``) or by ``claims_folder``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import attrs

if TYPE_CHECKING:
    import torch


def _never(_: Any) -> bool:
    return False


@attrs.frozen(kw_only=True)
class Family:
    """A registered model family. Every callable imports its heavy dependencies lazily: building the
    registry must stay cheap."""

    name: str
    #: ``accepts_pipeline(obj)``: is ``obj`` a pipeline (or pair object) this family's adapter wraps?
    accepts_pipeline: Callable[[Any], bool]
    #: ``accepts_transformer(module)``: is ``module`` a transformer this family's masked runner wraps?
    accepts_transformer: Callable[[Any], bool]
    #: ``adapter(pipeline)`` -> an :class:`Adapter`.
    adapter: Callable[[Any], "Adapter"]
    #: ``masked_runner(transformer)`` -> an object with ``begin``/``end``/``forward``/``forward_masked``/
    #: ``free_cache`` and ``patch_size`` (the contract of :class:`stitchkit.protocols.ContextProvider`).
    masked_runner: Callable[[Any], Any]
    #: ``forward(transformer, inputs)`` -> the stock prediction, shaped like the latents.
    forward: Callable[[Any, Any], "torch.Tensor"]
    #: ``check_pair(large_transformer, small_transformer)``: raise ConfigError if they cannot stitch.
    check_pair: Callable[[Any, Any], None]
    #: ``flops(config, num_tokens, text_tokens, *, mask_ratio=1.0)`` per sample, or None (no estimate).
    flops: Callable[..., float] | None = None
    #: ``random_inputs(transformer, *, latent_shape, text_tokens, batch, dtype, device, seed)`` -> random
    #: :class:`~stitchkit.protocols.ModelInputs` of the shapes its pipeline hands the transformer, for
    #: ``stitchkit profile``; None: :func:`stitchkit.cost.profile.random_inputs` (joint attention, pooled text).
    random_inputs: Callable[..., Any] | None = None
    #: ``load(large, small, *, torch_dtype, device, **kwargs)`` -> ``(large_pipeline, small_transformer)``.
    load: Callable[..., tuple[Any, Any]] | None = None
    #: Pipeline class names (``model_index.json``'s ``_class_name``) whose checkpoints this family loads.
    pipeline_class_names: tuple[str, ...] = ()
    #: ``claims_folder(path)``: a checkpoint folder this family recognises without a ``model_index.json``.
    claims_folder: Callable[[str], bool] = _never
    #: One line for ``stitchkit plugins``.
    description: str = ""


@attrs.frozen(kw_only=True)
class Conditioning:
    """Text conditioning for the loop, CFG halves already concatenated as [uncond, cond] when guided.
    ``pooled_projections`` is ``None`` for a family whose transformer takes no pooled text vector.

    Two kinds of guidance: ``guidance_scale`` is classifier-free guidance, which the loop applies to the
    two halves' predictions (``guided`` when above 1); ``guidance`` is a guidance-distilled model's input
    (FLUX.1-dev embeds its guidance scale, one pass), one value per model-batch row, handed to the
    transformer as :attr:`stitchkit.protocols.ModelInputs.guidance`, or ``None``. FLUX's "true CFG"
    (``true_cfg_scale`` with a negative prompt) is the first kind and may come with the second."""

    prompt_embeds: "torch.Tensor"
    pooled_projections: "torch.Tensor | None"
    guidance_scale: float
    guidance: "torch.Tensor | None" = None

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0


class Adapter(Protocol):
    """What :class:`stitchkit.StitchPipeline` asks of a family's pipeline adapter."""

    #: The family's name (``Family.name``).
    family: str

    @property
    def large_transformer(self) -> Any: ...

    @property
    def patch_size(self) -> "int | tuple[int, ...]":
        """The transformer's patch size along each latent axis (an int: the same along all)."""

    @property
    def device(self) -> "torch.device": ...

    @property
    def dtype(self) -> "torch.dtype": ...

    def default_size(self) -> "int | tuple[int, int]":
        """Default output size in pixels: one side of a square, or ``(height, width)``."""

    def num_tokens(self, *, height: int, width: int, num_frames: int | None = None) -> int:
        """Tokens the transformer sees per sample at this output size."""

    def to(self, device: Any) -> None: ...

    def new_scheduler(self) -> Any:
        """A fresh scheduler (the caller's is never stepped)."""

    def check_inputs(self, **kwargs: Any) -> None: ...

    def encode(self, *, guidance_scale: float, num_images_per_prompt: int, max_sequence_length: int,
               **prompts: Any) -> Conditioning: ...

    def prepare_latents(self, *, batch_size: int, height: int, width: int, num_frames: int | None, dtype: Any,
                        generator: Any, latents: Any) -> "torch.Tensor": ...

    def timesteps(self, scheduler: Any, *, num_inference_steps: int, latents: "torch.Tensor", sigmas: Any = None,
                  mu: float | None = None) -> "torch.Tensor": ...

    def decode(self, latents: "torch.Tensor", output_type: str) -> Any: ...


class VideoAdapter(Adapter, Protocol):
    """An adapter whose pipeline makes videos has two more methods (:mod:`stitchkit.pipeline.video` asks for them
    with ``getattr``: an adapter without them makes images, and refuses ``num_frames``)."""

    def check_num_frames(self, num_frames: int | None, path: str = "num_frames") -> int:
        """The frame count a call with ``num_frames`` generates (the family's default for ``None``); a
        ConfigError at ``path`` for a count the VAE cannot make."""

    def latent_frames(self, num_frames: int | None) -> int:
        """Latent frames for ``num_frames`` video frames (the VAE's temporal compression)."""
