"""Pictures of an experiment, composed from the files it wrote (so a resumed run draws the same ones).

* ``grid.png``: methods (rows, named on the left) × prompts (columns), the first seed;
* ``masks.png``: for each method with hybrid steps, the first prompt's final image, then one view per
  hybrid step with the tokens the large model recomputed at that step bright and the rest dimmed, like
  the paper's Fig. 1b.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

#: Pictures are scaled up so that a 32 px image is still readable in a grid.
MIN_CELL = 96
GAP = 2
LABEL_WIDTH = 120  # left margin for the method names


def _open(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _cell_size(image) -> int:
    return max(MIN_CELL, image.width)


def _compose(rows: list[list], cell: int, labels: list[str], background=(255, 255, 255)):
    """Rows of images, each row named by its label in a left margin."""
    from PIL import Image, ImageDraw

    margin = LABEL_WIDTH
    width = margin + max(len(r) for r in rows) * (cell + GAP) - GAP
    canvas = Image.new("RGB", (width, len(rows) * (cell + GAP) - GAP), background)
    draw = ImageDraw.Draw(canvas)
    for y, (row, label) in enumerate(zip(rows, labels)):
        draw.text((4, y * (cell + GAP) + cell // 2 - 6), label, fill=(0, 0, 0))
        for x, image in enumerate(row):
            if image is not None:
                canvas.paste(image.resize((cell, cell), resample=0), (margin + x * (cell + GAP), y * (cell + GAP)))
    return canvas


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def masked_view(image, grid: tuple[int, int], indices: list[int], dim: float = 0.3):
    """``image`` with the tokens in ``indices`` at full brightness and every other token dimmed."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float32)
    rows, cols = grid
    token = np.full(rows * cols, dim, dtype=np.float32)
    token[list(indices)] = 1.0
    scale = np.kron(token.reshape(rows, cols),
                    np.ones((pixels.shape[0] // rows, pixels.shape[1] // cols), dtype=np.float32))
    return Image.fromarray((pixels * scale[..., None]).clip(0, 255).astype(np.uint8))


def write_pictures(config) -> list[Path]:
    """Write grid.png and (when any method took hybrid steps) masks.png; return the paths written."""
    from stitchkit.experiments.store import atomic_write, image_path, record_path

    out_dir, seed = config.output, config.seeds[0]
    written = []
    rows = []
    for method in config.methods:
        paths = [image_path(out_dir, method.name, i, seed) for i in range(len(config.prompts))]
        rows.append([_open(p) if p.exists() else None for p in paths])
    first = next((im for row in rows for im in row if im is not None), None)
    if first is None:
        return written
    atomic_write(out_dir / "grid.png", _png(_compose(rows, _cell_size(first), [m.name for m in config.methods])))
    written.append(out_dir / "grid.png")

    mask_rows, mask_labels = [], []
    for method in config.methods:
        record, image_file = record_path(out_dir, method.name, 0, seed), image_path(out_dir, method.name, 0, seed)
        if not (record.exists() and image_file.exists()):
            continue
        masks = json.loads(record.read_text()).get("masks") or {}
        if masks.get("steps"):
            image = _open(image_file)
            mask_rows.append([image] + [masked_view(image, tuple(masks["grid"]), idx) for _, idx in masks["steps"]])
            mask_labels.append(method.name)
    if mask_rows:
        atomic_write(out_dir / "masks.png", _png(_compose(mask_rows, _cell_size(first), mask_labels)))
        written.append(out_dir / "masks.png")
    return written
