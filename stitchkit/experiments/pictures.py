"""Pictures of an experiment, composed from the files it wrote (so a resumed run draws the same ones).

* ``grid.png``: methods (rows, named on the left) × prompts (columns, each captioned with its index and
  wrapped text), the first seed; past :data:`COLUMNS` prompts the columns wrap into further blocks, and
  past :data:`PAGE_PROMPTS` prompts further pages follow (``grid-2.png``, …, at most :data:`MAX_PAGES`).
  ``grid_prompts.txt`` lists every column's index and full prompt.
* ``masks.png``: for a few prompts (:data:`MASK_PROMPTS`), each method with hybrid steps: its final image,
  then one view per hybrid step (numbered) with the tokens the large model recomputed at that step bright
  and the rest dimmed, like the paper's Fig. 1b; the label gives the step's mask ratio.

A video run's unit picture is its frame strip (:func:`stitchkit.pipeline.video.frame_strip`): grid cells keep the
strip's proportions, and masks.png shows each hybrid step's tokens on the strip's frames
(:func:`stitchkit.pipeline.video.strip_mask_view`), a few steps per row (:data:`VIDEO_MASK_VIEWS`).
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from pathlib import Path

from stitchkit.experiments.store import atomic_write, current_records, image_path, is_video_run, record_path
from stitchkit.pipeline.video import strip_mask_view

#: Pictures are scaled up so that a 32 px image is still readable in a grid.
MIN_CELL = 96
GAP = 2
LABEL_WIDTH = 120  # left margin for the method names
FONT_SIZE = 11
LINE = 13  # pixels per text line
CAPTION_LINES = 4  # lines of prompt text under a column (more is cut with "…")
COLUMNS = 8  # prompts per block of the grid before it wraps
PAGE_PROMPTS = 32  # prompts per grid page
MAX_PAGES = 4
MASK_PROMPTS = 3  # prompts shown in masks.png
MASK_VIEWS = 12  # at most this many hybrid steps per row (evenly spaced when there are more)
VIDEO_MASK_VIEWS = 4  # the same for a video run, whose views are frame strips
HEADER = 2 * LINE + 6


def _open(path: Path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _cell_size(image, video: bool = False) -> tuple[int, int]:
    """A cell's ``(width, height)``: an image's is square, a video's frame strip keeps its proportions
    (between MIN_CELL and twice that high)."""
    if not video:
        return (max(MIN_CELL, image.width),) * 2
    height = max(MIN_CELL, min(image.height, 2 * MIN_CELL))
    return round(image.width * height / image.height), height


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _wrap(text: str, width_px: int, lines: int) -> list[str]:
    chars = max(8, width_px // 6)
    wrapped = textwrap.wrap(text, chars) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][:chars - 1] + "…"
    return wrapped


def caption_height(cell: int, captions: list[str]) -> int:  # cell: the column's width
    """Pixels under a block of columns for the tallest caption (index line + wrapped prompt)."""
    return (1 + max(len(_wrap(c, cell, CAPTION_LINES)) for c in captions)) * LINE + 4


def _grid_page(rows: list[list], labels: list[str], columns: list[tuple[int, str]], cell_size: tuple[int, int],
               title: str):
    """One page: blocks of up to COLUMNS prompts, each block the methods' rows then the captions."""
    from PIL import Image, ImageDraw

    font = _font()
    cell, cell_h = cell_size
    blocks = [columns[i:i + COLUMNS] for i in range(0, len(columns), COLUMNS)]
    heights = [len(rows) * (cell_h + GAP) + caption_height(cell, [p for _, p in b]) for b in blocks]
    width = LABEL_WIDTH + min(COLUMNS, len(columns)) * (cell + GAP) - GAP
    canvas = Image.new("RGB", (width, HEADER + sum(heights) + GAP * (len(blocks) - 1)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0), font=font)
    draw.text((4, 4 + LINE), "rows: methods; columns: prompts (index in the source, then the prompt)",
              fill=(90, 90, 90), font=font)
    top = HEADER
    for b, block in enumerate(blocks):
        first = b * COLUMNS
        for y, (row, label) in enumerate(zip(rows, labels)):
            ty = top + y * (cell_h + GAP)
            for k, line in enumerate(_wrap(label, LABEL_WIDTH - 8, 3)):
                draw.text((4, ty + cell_h // 2 - 8 + k * LINE), line, fill=(0, 0, 0), font=font)
            for x in range(len(block)):
                image = row[first + x]
                if image is not None:
                    canvas.paste(image.resize(cell_size, resample=0), (LABEL_WIDTH + x * (cell + GAP), ty))
        ty = top + len(rows) * (cell_h + GAP)
        for x, (index, prompt) in enumerate(block):
            cx = LABEL_WIDTH + x * (cell + GAP)
            draw.text((cx, ty + 2), f"p{index:04d}", fill=(0, 0, 160), font=font)
            for k, line in enumerate(_wrap(prompt, cell, CAPTION_LINES)):
                draw.text((cx, ty + 2 + (k + 1) * LINE), line, fill=(40, 40, 40), font=font)
        top += heights[b] + GAP
    return canvas


def _done(config) -> set[tuple[str, int, int]]:
    """The units with a current record (their images are the ones the pictures may show)."""

    return {(m, r["prompt_index"], r["seed"]) for m, r in current_records(config)}


def write_grid(config, done: set | None = None) -> list[Path]:
    out_dir, seed = config.output, config.seeds[0]
    done = _done(config) if done is None else done
    columns = list(zip(config.prompt_indices, config.prompts))

    def shown(method: str, index: int) -> Path | None:  # its record is current and its image is there
        path = image_path(out_dir, method, index, seed)
        return path if (method, index, seed) in done and path.exists() else None

    images = {m.name: [shown(m.name, i) for i, _ in columns] for m in config.methods}
    first = next((p for paths in images.values() for p in paths if p is not None), None)
    if first is None:
        return []
    cell = _cell_size(_open(first), is_video_run(out_dir))
    written = []
    pages = [columns[i:i + PAGE_PROMPTS] for i in range(0, len(columns), PAGE_PROMPTS)][:MAX_PAGES]
    for n, page in enumerate(pages):
        start = n * PAGE_PROMPTS
        rows = [[None if p is None else _open(p) for p in images[m.name][start:start + len(page)]]
                for m in config.methods]
        shown = f"prompts {start + 1}-{start + len(page)} of {len(columns)}" if len(columns) > len(page) \
            else f"{len(columns)} prompts"
        title = f"{config.name}: every method on {shown}, seed {seed}"
        if len(config.seeds) > 1:  # every picture says what it leaves out
            title += f" (of {len(config.seeds)} seeds)"
        if n == len(pages) - 1 and len(columns) > MAX_PAGES * PAGE_PROMPTS:
            title += f"; pages stop at {MAX_PAGES * PAGE_PROMPTS} prompts"
        path = out_dir / ("grid.png" if n == 0 else f"grid-{n + 1}.png")
        atomic_write(path, _png(_grid_page(rows, [m.name for m in config.methods], page, cell, title)))
        written.append(path)
    legend = "".join(f"p{i:04d}\t{p}\n" for i, p in columns)
    atomic_write(out_dir / "grid_prompts.txt", legend.encode())
    return written + [out_dir / "grid_prompts.txt"]


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


def _spread(items: list, limit: int) -> list:
    if len(items) <= limit:
        return items
    return [items[round(i * (len(items) - 1) / (limit - 1))] for i in range(limit)]


def mask_rows(config, done: set | None = None) -> list[dict]:
    """The rows of masks.png: per chosen prompt, per method with hybrid steps, its image and masked views."""
    out_dir, seed = config.output, config.seeds[0]
    done = _done(config) if done is None else done
    rows, prompts_used = [], 0
    for index, prompt in zip(config.prompt_indices, config.prompts):
        found = []
        for method in config.methods:
            record, image_file = record_path(out_dir, method.name, index, seed), image_path(out_dir, method.name, index, seed)
            if (method.name, index, seed) not in done or not (record.exists() and image_file.exists()):
                continue
            data = json.loads(record.read_text())
            masks = data.get("masks") or {}
            if not masks.get("steps"):
                continue
            grid = tuple(masks["grid"])
            tokens = math.prod(grid)  # the mask's share, also where FullLarge ran everything
            image = _open(image_file)
            if len(grid) == 3:  # video tokens (frame, row, column), drawn on the unit's frame strip

                frames = data["sampler"]["num_frames"]
                views = [(step, len(idx) / tokens, strip_mask_view(image, num_frames=frames, grid=grid, indices=idx))
                         for step, idx in _spread(masks["steps"], VIDEO_MASK_VIEWS)]
            else:
                views = [(step, len(idx) / tokens, masked_view(image, grid, idx))
                         for step, idx in _spread(masks["steps"], MASK_VIEWS)]
            found.append({"method": method.name, "index": index, "prompt": prompt, "image": image,
                          "views": views, "hybrid_steps": len(masks["steps"])})
        if found:
            rows += found
            prompts_used += 1
            if prompts_used == MASK_PROMPTS:
                break
    return rows


def write_masks(config, done: set | None = None) -> list[Path]:
    from PIL import Image, ImageDraw

    rows = mask_rows(config, done)
    if not rows:
        return []
    font = _font()
    cell_size = _cell_size(rows[0]["image"], is_video_run(config.output))
    cell, cell_h = cell_size
    label_width = LABEL_WIDTH + 40
    row_h = LINE + cell_h + GAP + LINE  # step numbers above, prompt line below
    width = label_width + (1 + max(len(r["views"]) for r in rows)) * (cell + GAP) - GAP
    width = max(width, 640)
    canvas = Image.new("RGB", (width, HEADER + 2 * LINE + len(rows) * (row_h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"{config.name}: tokens the large model recomputed at each hybrid step "
                      f"(seed {config.seeds[0]})", fill=(0, 0, 0), font=font)
    draw.text((4, 4 + LINE), "bright: recomputed by the large model at that step; dimmed: the small "
                             "model's prediction kept. First column: the final image.", fill=(90, 90, 90), font=font)
    views = VIDEO_MASK_VIEWS if len(rows[0]["views"]) and is_video_run(config.output) else MASK_VIEWS
    seeds = f", seed {config.seeds[0]} of {len(config.seeds)}" if len(config.seeds) > 1 else ""
    draw.text((4, 4 + 2 * LINE), "label: method, prompt index, mask ratio (share of tokens recomputed)",
              fill=(90, 90, 90), font=font)
    draw.text((4, 4 + 3 * LINE), f"left out: steps past {views} per row (evenly spaced ones shown), prompts past "
              f"the first {MASK_PROMPTS} with hybrid steps{seeds}", fill=(160, 40, 40), font=font)
    for y, row in enumerate(rows):
        top = HEADER + 2 * LINE + y * (row_h + 4)
        ratio = next((r for _, r, _ in row["views"] if r is not None), None)
        label = [row["method"], f"p{row['index']:04d}",
                 f"mask ratio {ratio:.0%}" if ratio is not None else "", f"{row['hybrid_steps']} hybrid steps"
                 + (f", {len(row['views'])} shown" if len(row["views"]) < row["hybrid_steps"] else "")]
        for k, line in enumerate(label):
            draw.text((4, top + LINE + k * LINE), line, fill=(0, 0, 0), font=font)
        draw.text((label_width, top), "final", fill=(0, 0, 160), font=font)
        canvas.paste(row["image"].resize(cell_size, resample=0), (label_width, top + LINE))
        for x, (step, _, view) in enumerate(row["views"], 1):
            cx = label_width + x * (cell + GAP)
            draw.text((cx, top), f"step {step}", fill=(0, 0, 160), font=font)
            canvas.paste(view.resize(cell_size, resample=0), (cx, top + LINE))
        draw.text((label_width, top + LINE + cell_h + 2), _wrap(row["prompt"], width - label_width, 1)[0],
                  fill=(60, 60, 60), font=font)
    atomic_write(config.output / "masks.png", _png(canvas))
    return [config.output / "masks.png"]


def write_pictures(config, done: set | None = None) -> list[Path]:
    """Write grid.png (and its pages and prompt legend) and, when any method took hybrid steps, masks.png;
    ``done``: the units with a current record (default: read from the folder)."""
    done = _done(config) if done is None else done
    return write_grid(config, done) + write_masks(config, done)
