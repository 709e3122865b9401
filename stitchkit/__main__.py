"""``python -m stitchkit``: the ``stitchkit`` command, as launchers run it
(``torchrun --nproc_per_node=K -m stitchkit run EXP.yaml``, ``accelerate launch -m stitchkit ...``)."""

from stitchkit.cli import console

if __name__ == "__main__":
    console()
