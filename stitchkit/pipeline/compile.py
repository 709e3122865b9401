"""``torch.compile`` for a stitched pair: regional compilation of both transformers' repeated blocks.

diffusers recommends compiling only the blocks a transformer repeats (``ModelMixin.compile_repeated_blocks``,
``diffusers/models/modeling_utils.py:1664-1695``; the PyTorch recipe "regional compilation"): one graph
serves every block of a kind, so compiling takes seconds instead of minutes, at the speed of a whole-model
compile. stitchkit compiles both transformers that way, and it is the same compiled blocks that run the
masked forwards: every family's masked runner calls the model's own blocks on ``T + m`` tokens, with its
K/V-cache processors inside them (:mod:`stitchkit.families.flux.masked` and its siblings). So

* the token count is dynamic (``dynamic=True``): a full step (``N`` image tokens) and a masked step (``m``)
  of any mask ratio, batch or prompt length share one graph per block kind and mode, and a generation after
  the first recompiles nothing (``tests/test_compile.py`` counts dynamo's frames);
* the graphs are whole (``fullgraph=True``): the K/V processors trace without a break (what cannot be
  traced, such as the inference-mode check of a cache, runs outside the blocks,
  :func:`stitchkit.models.cuda_graphs.release_locked`).

The first generation compiles one graph per block kind for each mode it meets (the small model's stock
call; the large model's stock call, its recording call (SD3: with and without buffers to reuse, which it
keeps for its CUDA graphs), its masked call), plus one for the strided text input that every FLUX
single-stream block after the first receives, and separate ones for batch 1 (dynamo specializes sizes 0
and 1). A FLUX hybrid generation compiles 10 graphs (``tests/pipeline/test_compile.py``), the shapes pair's
three step kinds 6 (``benchmarks/compile.py``). Dynamo's default limit of 8 per code object would be
exceeded by a run that meets every mode and batch size, so :func:`compile_pair` raises
``torch._dynamo.config.recompile_limit`` to :data:`RECOMPILE_LIMIT` (never lowers it): above the limit
dynamo would silently run the blocks eagerly.

Example::

    pipe = StitchPipeline.from_pair("flux-tiny-random")
    pipe.compile_repeated_blocks()          # both transformers; torch.compile's options as keywords
    pipe("a red circle", switch="hybridstitch-30")   # the first call compiles, the next ones reuse it
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

import torch

from stitchkit.errors import ConfigError
from stitchkit.models.cuda_graphs import cuda_graphs_enabled

logger = logging.getLogger(__name__)

#: What stitchkit passes to ``torch.compile`` unless the caller says otherwise (see the module docstring).
DEFAULT_OPTIONS: Mapping[str, Any] = {"fullgraph": True, "dynamic": True}
#: The ``torch.compile`` options :func:`compile_pair` takes (``compile:`` in an experiment's YAML too).
OPTIONS = ("fullgraph", "dynamic", "mode", "backend", "options")
#: Graphs per block kind a stitched generation may need (see the module docstring), with room to spare.
RECOMPILE_LIMIT = 32
#: ``torch.compile`` modes that capture CUDA graphs of their own, which stitchkit's CUDA-graph replay of
#: masked and small-model calls (:mod:`stitchkit.models.cuda_graphs`) would capture again.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def repeated_block_classes(model: torch.nn.Module) -> tuple[str, ...]:
    """The class names of the blocks ``model`` repeats: diffusers' ``_repeated_blocks`` where the model
    class declares them (FLUX, Wan), else the classes of the modules in its top-level ``ModuleList``s
    (``SD3Transformer2DModel`` declares none in diffusers 0.42.1; its ``transformer_blocks`` are the
    ``JointTransformerBlock``s)."""
    declared = tuple(getattr(model, "_repeated_blocks", None) or ())
    if declared:
        return declared
    names = [type(block).__name__ for child in model.children() if isinstance(child, torch.nn.ModuleList)
             for block in child]
    return tuple(dict.fromkeys(names))


def compile_repeated_blocks(model: torch.nn.Module, **options: Any) -> int:
    """Compile every block of ``model`` whose class :func:`repeated_block_classes` names, each with
    ``torch.compile(**options)`` (``nn.Module.compile``: the module stays the same object, its state dict and
    hooks too). Returns the number of blocks compiled."""
    classes = repeated_block_classes(model)
    if getattr(model, "_repeated_blocks", None):
        model.compile_repeated_blocks(**options)  # diffusers' own, where the model declares its blocks
    else:
        for module in model.modules():
            if type(module).__name__ in classes:
                module.compile(**options)
    count = sum(type(m).__name__ in classes for m in model.modules())
    if not count:
        raise ConfigError("compile", f"{type(model).__name__} has no repeated blocks to compile",
                          "compile it yourself with torch.compile, or leave compile off")
    return count


def check_options(options: Mapping[str, Any], path: str = "compile") -> dict[str, Any]:
    """``options`` over :data:`DEFAULT_OPTIONS`, each name checked; a CUDA-graph mode is refused while
    stitchkit replays its own CUDA graphs."""
    for name in options:
        if name not in OPTIONS:
            raise ConfigError(f"{path}.{name}", "is not a torch.compile option stitchkit passes",
                              "allowed: " + ", ".join(OPTIONS))
    mode = options.get("mode")
    if mode in CUDA_GRAPH_MODES and torch.cuda.is_available() and cuda_graphs_enabled():
        raise ConfigError(f"{path}.mode", f"{mode!r} captures CUDA graphs, which stitchkit already replays",
                          "use 'max-autotune-no-cudagraphs' or 'default', or set STITCHKIT_CUDA_GRAPHS=0")
    return {**DEFAULT_OPTIONS, **options}


def compile_pair(models: Iterable[torch.nn.Module], **options: Any) -> dict[str, int]:
    """Regional compilation of each of ``models`` (the pair's transformers) with ``torch.compile`` options
    ``options`` over :data:`DEFAULT_OPTIONS`; returns ``{model class: blocks compiled}``. Compile after
    loading LoRA weights: peft's layers replace modules the compiled graphs were traced through."""
    options = check_options(options)
    import torch._dynamo  # deferred: dynamo's import is heavy and only compiling needs it

    if torch._dynamo.config.recompile_limit < RECOMPILE_LIMIT:
        logger.info("torch._dynamo.config.recompile_limit raised from %d to %d: a stitched generation compiles "
                    "one graph per block kind and mode", torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    compiled = {}
    for model in models:
        compiled[type(model).__name__] = compiled.get(type(model).__name__, 0) + compile_repeated_blocks(
            model, **options)
    logger.info("compiled the repeated blocks (%s) with %s", compiled, options)
    return compiled
