#!/usr/bin/env bash
# Train the shapes pair from scratch as the shipped one was trained, and measure it.
#
#   examples/train_shapes_pair.sh [OUT] [extra train-pair options...]
#
# The shipped pair came from this command on one H100 with `--max-minutes 4.5` (which stopped it at
# step 1392, now the default --steps) and `--also-small 1x160 --also-small 1x96` (candidates trained
# alongside; they do not change the pair). Copy OUT/pair/* into stitchkit/pairs/shapes/ to ship a result.
# The judge in stitchkit/pairs/shapes/classifier/ is trained separately:
#   python -m stitchkit.shapes.classifier 1500
set -euo pipefail
out="${1:-runs/shapes-pair}"
shift || true
python -m stitchkit.commands.train_pair --out "$out" --seed 0 --no-progress \
  --evaluate 200 --guidance 3 --classifier stitchkit/pairs/shapes/classifier "$@"
