"""The stock transformer call on :class:`~stitchkit.protocols.ModelInputs`, for a family that needs nothing
else (a family passes its own as ``Family.forward``; the engine's ``Models.forward`` defaults to this), and
the small model's call as the loop makes it (and the profile times it): on CUDA, replayed from a graph."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stitchkit.models.cuda_graphs import CudaGraphs, cuda_graphs_enabled
from stitchkit.protocols import ModelInputs

if TYPE_CHECKING:
    import torch


def stock_forward(model: "torch.nn.Module", inputs: "ModelInputs") -> "torch.Tensor":
    """``model(hidden_states, timestep, encoder_hidden_states[, pooled_projections])``: the prediction."""
    extra = {} if inputs.pooled_projections is None else {"pooled_projections": inputs.pooled_projections}
    return model(hidden_states=inputs.hidden_states, timestep=inputs.timestep,
                 encoder_hidden_states=inputs.encoder_hidden_states, return_dict=False, **extra)[0]


def small_forward_fn(model: torch.nn.Module, device: torch.device, forward=stock_forward):
    """The small model's forward (``forward(model, inputs)``); on CUDA replayed from a graph: at the paper's
    sizes a small model's step is partly bound by kernel launches once the GPU has idled between calls."""
    if device.type != "cuda" or not cuda_graphs_enabled():
        return lambda inputs: forward(model, inputs)
    graphs = CudaGraphs(lambda x, t, e, *p: forward(model, ModelInputs(
        hidden_states=x, timestep=t, encoder_hidden_states=e, pooled_projections=p[0] if p else None)))
    return lambda inputs: graphs(inputs.hidden_states, inputs.timestep, inputs.encoder_hidden_states,
                                 *(() if inputs.pooled_projections is None else (inputs.pooled_projections,)))
