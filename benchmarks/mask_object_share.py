"""Where do a run's masks land: on the objects or on the background? (issue 15, item 5; shapes pair only)

    python benchmarks/mask_object_share.py examples/mask_measure_study.yaml

Objects are found in the large model's image of each prompt: pixels differing from the border's median
colour by more than 0.25 in some channel; a token (2×2 pixels) is an object token when a quarter of it is.
Per method: the share of the masked tokens that are object tokens (mean over hybrid steps and prompts),
the best share a mask of that size could reach (object tokens / mask size, capped at 1), and how much
consecutive masks overlap (Jaccard). Machine-independent: nothing here is timed.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np
from PIL import Image

from stitchkit.experiments.config import ExperimentConfig
from stitchkit.experiments.config import BASELINE
from stitchkit.experiments.store import image_path, load_records


def object_tokens(image: np.ndarray, patch: int = 2) -> np.ndarray:
    """Boolean (N,) over the token grid, row-major: tokens at least a quarter covered by object pixels."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0)
    pixels = (np.abs(image - background).max(axis=2) > 0.25).astype(np.float32)
    h, w = pixels.shape
    share = pixels.reshape(h // patch, patch, w // patch, patch).mean(axis=(1, 3))
    return (share >= 0.25).reshape(-1)


def main(path: str) -> int:
    config = ExperimentConfig.from_yaml(path)
    records = load_records(config)
    print(f"{'method':20} {'large-step eq.':>14} {'mask on objects':>16} {'best possible':>14} {'overlap':>8}")
    for method, recs in records.items():
        if method == BASELINE or not recs:
            continue
        shares, best, overlaps = [], [], []
        for r in recs:
            image = np.asarray(Image.open(image_path(config.output, BASELINE, r["prompt_index"], r["seed"]))
                               .convert("RGB"), dtype=np.float32) / 255.0
            objects = object_tokens(image)
            previous = None
            for _, indices in r["masks"]["steps"]:
                mask = set(indices)
                shares.append(float(objects[list(mask)].mean()))
                best.append(min(1.0, float(objects.sum()) / len(mask)))
                if previous is not None:
                    overlaps.append(len(mask & previous) / len(mask | previous))
                previous = mask
        if not shares:
            continue
        eq = statistics.fmean(r["large_step_equivalents"] for r in recs)
        print(f"{method:20} {eq:>14.2f} {statistics.fmean(shares):>16.3f} {statistics.fmean(best):>14.3f} "
              f"{statistics.fmean(overlaps) if overlaps else float('nan'):>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
