"""stitchkit's built-in policies, installed as ``stitchkit.policies`` (this folder is ``policies/`` in the
repository). Each module is an ordinary pluggy plugin with ``@stitchkit.hookimpl`` functions, loaded through
the same path as an outside package's (see ``stitchkit.registry``)."""

if __name__ == "policies":  # imported as a bare top-level name from a checkout
    raise ImportError("import the built-in policies as `stitchkit.policies`, not `policies`")
