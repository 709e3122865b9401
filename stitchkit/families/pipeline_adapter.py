"""What every family's adapter of a diffusers pipeline shares: the pipeline it wraps, its large
transformer, where and in which dtype it runs, moving it, and a fresh flow-matching scheduler per
generation (the caller's scheduler is never stepped). A family's adapter (SD3, Wan, FLUX) subclasses
:class:`DiffusersAdapter` and adds what differs: patch size, VAE factor, sizes, encoding, latents, decoding
(:class:`stitchkit.families.family.Adapter`)."""

from __future__ import annotations

from typing import Any

import torch

from stitchkit.errors import ConfigError


class DiffusersAdapter:
    """The large pipeline and the calls every family makes of it the same way."""

    #: The family's name (``Family.name``).
    family: str = ""
    #: What ``new_scheduler`` suggests when the pipeline's scheduler is not a flow-matching one.
    scheduler_hint = "stitchkit supports FlowMatchEulerDiscreteScheduler-like schedulers"

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    @property
    def large_transformer(self):
        return self.pipeline.transformer

    @property
    def device(self) -> torch.device:
        return self.pipeline._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipeline.transformer.dtype

    def to(self, device) -> None:
        self.pipeline.to(device)

    def new_scheduler(self):
        """A fresh scheduler from the pipeline's config: the caller's scheduler is never stepped."""
        scheduler = self.pipeline.scheduler
        if not hasattr(scheduler, "sigmas"):
            raise ConfigError("scheduler", f"{type(scheduler).__name__} is not a flow-matching scheduler",
                              self.scheduler_hint)
        return type(scheduler).from_config(scheduler.config)
