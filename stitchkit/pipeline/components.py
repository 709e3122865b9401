"""A stitched pipeline's components, as diffusers' ``DiffusionPipeline`` keeps them.

diffusers' generic machinery (``components``, ``save_pretrained``, a single-path ``from_pretrained``,
``enable_model_cpu_offload``) reads a pipeline's components from the signature of its ``__init__``
(``DiffusionPipeline._get_signature_keys``, ``pipeline_utils.py:1838``). A stitched pipeline's components are
those of its family's large pipeline class plus ``small_transformer``, so each large pipeline class gets one
``StitchPipeline`` subclass here whose ``__init__`` takes exactly those: ``StableDiffusion3Pipeline``'s nine
components and ``small_transformer``, say. It builds the large pipeline from them (sharing every module) and
hands it to ``StitchPipeline.__init__``; diffusers' ``from_pretrained`` and the tests of diffusers'
``PipelineTesterMixin`` (``pipeline_class(**components)``) then work as they do for the large pipeline.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

from stitchkit.errors import ConfigError
from stitchkit.registry import get_registry

__all__ = ["SMALL", "STITCH_PARAMETERS", "component_class", "large_pipeline_class", "offload_sequence"]

#: The component that is the small model; every other component is the large pipeline's.
SMALL = "small_transformer"
#: Non-module entries of a stitched pipeline's ``model_index.json`` (diffusers' optional ``__init__`` parameters,
#: ``DiffusionPipeline.parameters``): the pair id, and the family and large pipeline class, which ``__init__``
#: accepts back from the file but derives from the components themselves.
STITCH_PARAMETERS = ("pair_id", "family", "large_pipeline")


def offload_sequence(large_sequence: str | None, components: dict[str, Any]) -> str:
    """diffusers' ``model_cpu_offload_seq`` with the small model right after the large one: each model goes to
    the device when it runs and the one before it in the chain goes back to the CPU, so a hybrid step (large,
    then small) holds one transformer at a time, as the large pipeline alone does."""
    order = (large_sequence or "").split("->") if large_sequence else [
        name for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae")
        if name in components]
    if "transformer" not in order:
        order.append("transformer")
    at = order.index("transformer") + 1
    return "->".join([*order[:at], SMALL, *order[at:]])


def large_pipeline_class(entry: Any, path: str):
    """The large pipeline class from ``model_index.json``'s ``large_pipeline`` entry ``[library, class]``."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
        raise ConfigError(path, f"{entry!r} is not [library, class name]",
                          "write the folder with StitchPipeline.save_pretrained")
    library, name = entry
    try:
        return getattr(importlib.import_module(library), name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(path, f"cannot import {library}.{name} ({error})",
                          f"install the package that provides {name}") from None


@functools.cache
def component_class(base: type, large_class: type) -> type:
    """``base``'s subclass (named ``base.__name__``, so ``model_index.json`` says ``StitchPipeline``) whose
    ``__init__(**components, small_transformer, pair_id=None)`` mirrors ``large_class``'s components."""
    expected, optional = large_class._get_signature_keys(large_class)
    modules = [m for m in expected if m not in large_class._optional_components]
    optional_modules = [m for m in expected if m in large_class._optional_components]
    large_parameters = [p for p in optional if p not in STITCH_PARAMETERS]
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    signature = inspect.Signature([
        inspect.Parameter("self", keyword),
        *(inspect.Parameter(m, keyword) for m in [*modules, SMALL]),
        *(inspect.Parameter(m, keyword, default=None) for m in optional_modules),
        *(inspect.Parameter(p, keyword, default=inspect.signature(large_class.__init__).parameters[p].default)
          for p in large_parameters),
        *(inspect.Parameter(p, keyword, default=None) for p in STITCH_PARAMETERS),
        inspect.Parameter("registry", keyword, default=None),
    ])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        values.pop("self")
        small, pair_id, registry = values.pop(SMALL), values.pop("pair_id"), values.pop("registry")
        for derived in STITCH_PARAMETERS[1:]:
            values.pop(derived)
        large = large_class(**values)
        registry = registry or get_registry()
        family = registry.family_for_pipeline(large)
        base.__init__(self, family.adapter(large), small, registry=registry, pair_id=pair_id, family=family)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    return type(base.__name__, (base,), {
        "__init__": __init__, "__module__": base.__module__,
        "__qualname__": f"{base.__qualname__}[{large_class.__name__}]",
        "__doc__": f"A {base.__name__} whose components are {large_class.__name__}'s and {SMALL}.",
        "_components_of": large_class,
        "_optional_components": list(large_class._optional_components),
        "model_cpu_offload_seq": offload_sequence(getattr(large_class, "model_cpu_offload_seq", None),
                                                  dict.fromkeys(expected)),
    })

