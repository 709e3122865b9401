"""The stock Wan transformer call on :class:`~stitchkit.protocols.ModelInputs` (``Family.forward``): the
family's plugin module registers it and the masked runner falls back to it, so it lives apart from both."""

from __future__ import annotations


def wan_forward(model, inputs):
    """The stock transformer on ``inputs``, latents cast to the model's dtype as ``WanPipeline`` does:
    ``(B, C, F, H, W)``."""
    return model(hidden_states=inputs.hidden_states.to(model.dtype), timestep=inputs.timestep,
                 encoder_hidden_states=inputs.encoder_hidden_states, return_dict=False)[0]
