"""Model families: each lives in its own folder here and registers itself through pluggy
(``register_model_families``), like an outside package would; see :mod:`stitchkit.families.family`."""

from stitchkit.families.family import Adapter, Conditioning, Family

__all__ = ["Adapter", "Conditioning", "Family"]
