"""Family-neutral pieces of the masked forwards and the engine: CUDA-graph replay and the K/V lock check.

Every model family's masked runner and the engine's small-model call replay from :class:`CudaGraphs` on a
GPU: with a few hundred tokens a step is bound by Python and kernel launches, not by the GPU. They live
here, not in a family's runner, so that the engine imports no model family.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import torch


class CudaGraphs:
    """Replay ``fn(*tensors)`` from CUDA graphs, one per input shape.

    A graph replays the kernels of one call on fixed input buffers (and on whatever other tensors the call
    read when it was captured, such as a K/V cache); the inputs are copied into those buffers before each
    replay. ``fn`` must not synchronise with the host. :meth:`clear` drops every graph: call it whenever a
    tensor captured by reference (a cache) is freed or reallocated. Capture costs about three calls.
    """

    def __init__(self, fn, key_extra=lambda: ()) -> None:
        self.fn = fn
        self.key_extra = key_extra
        self.graphs: dict[tuple, tuple] = {}

    def clear(self) -> None:
        self.graphs.clear()

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors) + tuple(self.key_extra())
        entry = self.graphs.get(key)
        if entry is None:
            static = tuple(t.clone() for t in tensors)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture stream, as CUDA graphs require
                for _ in range(2):
                    self.fn(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self.fn(*static)
            entry = self.graphs[key] = (graph, static, output)
        graph, static, output = entry
        for buffer, value in zip(static, tensors):
            buffer.copy_(value)
        graph.replay()
        return output.clone()


def cuda_graphs_enabled() -> bool:
    """CUDA-graph replay is on unless ``STITCHKIT_CUDA_GRAPHS=0``."""
    return os.environ.get("STITCHKIT_CUDA_GRAPHS", "1") != "0"


def locked(cache: torch.Tensor) -> bool:
    """A cache recorded under ``torch.inference_mode()`` can be written only inside it."""
    return cache.is_inference() and not torch.is_inference_mode_enabled()


def release_locked(processors: Iterable[Any], *, clone: bool) -> None:
    """Before a call writes the K/V caches (``.key``/``.value``) of ``processors``: a :func:`locked` cache is
    cloned (``clone``: a masked call refreshes it in place) or dropped (a recording call allocates its own).

    Checked here, once per call and outside the transformer blocks, not in the processors: under
    ``torch.compile`` (:mod:`stitchkit.pipeline.compile`) the processors run inside the compiled blocks, and
    ``Tensor.is_inference`` cannot be traced there (dynamo breaks the graph on it)."""
    for processor in processors:
        if processor.key is not None and locked(processor.key):
            if clone:
                processor.key, processor.value = processor.key.clone(), processor.value.clone()
            else:
                processor.key = processor.value = None
