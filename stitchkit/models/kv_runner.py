"""The lifecycle every family's masked runner shares (Algorithm 1, lines 6 and 10): K/V-cache attention
processors installed for one generation and the model's own processor objects put back after it, the cache
freed, its size reported.

A family's runner (:class:`stitchkit.families.sd3.masked.MaskedTransformer`, the Wan and FLUX ones) subclasses
:class:`KVCacheRunner`, says which attention modules get a K/V processor (:meth:`KVCacheRunner._kv_processor`)
and writes its own forwards; no diffusers class is patched, so outside ``begin``/``end`` the model is the
stock one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stitchkit.models.attention import inherit_backend

if TYPE_CHECKING:
    from typing_extensions import Self


class KVCacheRunner:
    """``begin``/``end`` (also as a context manager), ``free_cache``, ``cache_nbytes``, ``has_cache``.

    A subclass sets ``self.model`` and ``self._state`` (its per-call state, with ``reset()``) and calls
    ``super().__init__()``; each processor it makes holds its module's ``key``/``value`` cache."""

    def __init__(self) -> None:
        self._originals: dict[str, object] | None = None
        self._processors: list[Any] = []

    def _kv_processor(self, name: str, original: object) -> Any | None:
        """The K/V processor for the attention module ``name`` (its current processor: ``original``), or
        ``None`` to keep ``original`` (Wan's cross-attention)."""
        raise NotImplementedError

    # -- installing and removing ------------------------------------------------------------------

    def begin(self) -> "Self":
        """Install the K/V processors, each inheriting the attention backend of the one it replaces."""
        if self._originals is not None:
            raise RuntimeError(f"{type(self).__name__}.begin() called twice without end()")
        originals = self.model.attn_processors
        installed, ours = {}, []
        for name, original in originals.items():
            processor = self._kv_processor(name, original)
            if processor is not None:
                processor = inherit_backend(processor, original)
                ours.append(processor)
            installed[name] = original if processor is None else processor
        self.model.set_attn_processor(installed)  # set_attn_processor empties the dict it is given
        self._originals, self._processors = originals, ours
        return self

    def end(self) -> None:
        """Restore the model's original processor objects and free the cache. Safe to call twice."""
        if self._originals is None:
            return
        self.free_cache()
        self.model.set_attn_processor(dict(self._originals))
        self._originals, self._processors = None, []
        self._state.reset()

    def __enter__(self) -> "Self":
        return self.begin()

    def __exit__(self, *exc_info: object) -> None:
        self.end()

    def _require_begun(self) -> None:
        if self._originals is None:
            raise RuntimeError(f"call {type(self).__name__}.begin() (or use it as a context manager) before a "
                               "forward")

    # -- the cache ---------------------------------------------------------------------------------

    def free_cache(self) -> None:
        """Drop the recorded K/V (the memory goes back to the allocator)."""
        for processor in self._processors:
            processor.key = processor.value = None

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by the K/V cache (a family's docstring gives its element count)."""
        return sum(p.key.nbytes + p.value.nbytes for p in self._processors if p.key is not None)

    @property
    def has_cache(self) -> bool:
        return any(p.key is not None for p in self._processors)
