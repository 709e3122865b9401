"""The stock transformer call on :class:`~stitchkit.protocols.ModelInputs`, for a family that needs nothing
else (a family passes its own as ``Family.forward``; the engine's ``Models.forward`` defaults to this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from stitchkit.protocols import ModelInputs


def stock_forward(model: "torch.nn.Module", inputs: "ModelInputs") -> "torch.Tensor":
    """``model(hidden_states, timestep, encoder_hidden_states[, pooled_projections])``: the prediction."""
    extra = {} if inputs.pooled_projections is None else {"pooled_projections": inputs.pooled_projections}
    return model(hidden_states=inputs.hidden_states, timestep=inputs.timestep,
                 encoder_hidden_states=inputs.encoder_hidden_states, return_dict=False, **extra)[0]
