"""Model families: each lives in its own folder here and registers itself through pluggy
(``register_model_families``), like an outside package would; see :mod:`stitchkit.families.family`."""

from stitchkit.families.family import Adapter, Conditioning, Family

#: Built-in families registered first, in this order (the order lists of families and pairs show them, the
#: first pair being the default one error messages offer); families not named here follow in name order, so
#: a new family never reorders the lists.
REGISTRATION_ORDER = ("sd3", "shapes", "wan", "flux")

__all__ = ["Adapter", "Conditioning", "Family", "REGISTRATION_ORDER"]
