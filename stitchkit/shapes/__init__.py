"""The captioned-shapes world and the small pair of text-to-image transformers trained on it.

* :mod:`stitchkit.shapes.world`: the seeded, endless data generator and its caption grammar;
* :mod:`stitchkit.shapes.pair`: building, saving and loading the pair (``load_shapes_pair``,
  ``encode_prompts``);
* :mod:`stitchkit.shapes.sampling`: a plain flow-match Euler sampler with CFG for one model of the pair;
* :mod:`stitchkit.shapes.train`: joint training from a seed (``stitchkit train-pair``);
* :mod:`stitchkit.shapes.classifier` and :mod:`stitchkit.shapes.evaluate`: the attribute classifier behind
  the offline metrics of :mod:`stitchkit.shapes.scores`, and the measurement of each model alone.
"""

from stitchkit.shapes.pair import ShapesPair, encode_prompts, load_shapes_pair
from stitchkit.shapes.sampling import sample
from stitchkit.shapes.world import Caption, ShapesWorld, parse_caption

__all__ = ["Caption", "ShapesPair", "ShapesWorld", "encode_prompts", "load_shapes_pair", "parse_caption", "sample"]
