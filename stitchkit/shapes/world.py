"""A seeded, endless world of captioned shapes: the training data of the shipped ``shapes`` pair.

Every picture holds one object (a circle, square, triangle, cross, ring or diamond) of a named colour and
size, at one of nine named positions, on a background of another named colour; its caption says all five
attributes in one fixed grammar::

    a small red circle at the top left on a blue background

Scene ``index`` of ``ShapesWorld(seed)`` is a pure function of ``(seed, index)`` (a counter-based hash,
no random state), so any slice of the endless stream can be drawn in any order, on any machine, and a
training run resumed mid-way sees exactly the pictures it would have seen. Pictures are rendered in torch
(so training can render on its own device) with 4×4 supersampled anti-aliasing, as ``(3, H, W)`` floats in
``[-1, 1]``.

>>> world = ShapesWorld(seed=0)
>>> batch = world.batch(0, 4)
>>> batch.images.shape
torch.Size([4, 3, 32, 32])
>>> parse_caption(batch.captions[0].to_text()) == batch.captions[0]
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs
import numpy as np
import torch

from stitchkit.errors import ConfigError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")

#: Named colours (sRGB, 0-255): the corners of the colour cube, well apart from each other.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 185, 55),
    "blue": (40, 70, 230),
    "yellow": (245, 225, 40),
    "cyan": (40, 215, 225),
    "magenta": (215, 45, 210),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

SIZES: tuple[str, ...] = ("small", "large")

#: The nine cells of a 3×3 grid, row by row; ``(column, row)`` in ``{0, 1, 2}``.
POSITIONS: tuple[str, ...] = (
    "top left", "top center", "top right",
    "center left", "center", "center right",
    "bottom left", "bottom center", "bottom right",
)

#: Every attribute a caption names, with its allowed values in label order (the classifier's heads).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "size": SIZES,
    "position": POSITIONS,
    "background": COLOUR_NAMES,
}

#: Half-extent of an object, as a fraction of the image side (a circle's radius).
SIZE_RADIUS: dict[str, float] = {"small": 4.5 / 32, "large": 7.5 / 32}
#: Centres of the grid's columns and rows, as fractions of the image side.
GRID_CENTRES: tuple[float, float, float] = (8 / 32, 16 / 32, 24 / 32)
#: Largest shift of an object's centre from its cell's centre, and of its radius, as drawn per scene.
POSITION_JITTER = 1.0 / 32
SCALE_JITTER = 0.08

_CAPTION = re.compile(
    r"^a (?P<size>\w+) (?P<colour>\w+) (?P<shape>\w+) at the (?P<position>[a-z ]+?) "
    r"on a (?P<background>\w+) background$"
)
_GRAMMAR = "expected 'a <size> <colour> <shape> at the <position> on a <colour> background'"


def _one_of(field: str, allowed: Sequence[str]):
    def check(instance, attribute, value) -> None:
        if value not in allowed:
            raise ConfigError(f"caption.{field}", f"unknown {field} {value!r}", f"one of {', '.join(allowed)}")

    return check


@attrs.frozen(kw_only=True)
class Caption:
    """The five attributes of one scene; ``to_text()`` is its caption, :func:`parse_caption` the inverse."""

    shape: str = attrs.field(validator=_one_of("shape", SHAPES))
    colour: str = attrs.field(validator=_one_of("colour", COLOUR_NAMES))
    size: str = attrs.field(validator=_one_of("size", SIZES))
    position: str = attrs.field(validator=_one_of("position", POSITIONS))
    background: str = attrs.field(validator=_one_of("background", COLOUR_NAMES))

    def __attrs_post_init__(self) -> None:
        if self.background == self.colour:
            raise ConfigError("caption.background", f"same as the object's colour {self.colour!r}",
                              "the background must differ from the object")

    def to_text(self) -> str:
        """``"a small red circle at the top left on a blue background"``."""
        return f"a {self.size} {self.colour} {self.shape} at the {self.position} on a {self.background} background"

    def labels(self) -> dict[str, int]:
        """Each attribute's index in :data:`ATTRIBUTES` (the classifier's targets)."""
        return {name: ATTRIBUTES[name].index(getattr(self, name)) for name in ATTRIBUTES}

    @classmethod
    def from_labels(cls, labels: dict[str, int]) -> Caption:
        """The inverse of :meth:`labels`."""
        return cls(**{name: ATTRIBUTES[name][int(labels[name])] for name in ATTRIBUTES})


def parse_caption(text: str) -> Caption:
    """The :class:`Caption` a caption's text names; :class:`~stitchkit.ConfigError` if it is not one."""
    match = _CAPTION.match(" ".join(text.lower().split()))
    if match is None:
        raise ConfigError("caption", f"cannot parse {text!r}", _GRAMMAR)
    return Caption(**match.groupdict())


def vocabulary() -> list[str]:
    """Every word a caption can hold, sorted (the shapes pair's tokenizer is built from it)."""
    words = {"a", "at", "the", "on", "background", *SHAPES, *COLOUR_NAMES, *SIZES}
    for position in POSITIONS:
        words.update(position.split())
    return sorted(words)


@attrs.frozen(kw_only=True)
class Scene:
    """A caption plus how it is drawn: the centre's shift ``(dx, dy)`` and the radius' scale."""

    caption: Caption
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


@attrs.frozen(kw_only=True)
class WorldBatch:
    """Pictures ``(B, 3, H, W)`` in ``[-1, 1]``, their captions, and integer labels per attribute ``(B,)``."""

    images: torch.Tensor
    captions: list[Caption]
    labels: dict[str, torch.Tensor]

    @property
    def texts(self) -> list[str]:
        return [c.to_text() for c in self.captions]


# --- counter-based randomness: splitmix64 over (seed, index, stream) ------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(seed: int, indices: np.ndarray, streams: int) -> np.ndarray:
    """``(len(indices), streams)`` floats in ``[0, 1)``, a pure function of ``(seed, index, stream)``."""
    with np.errstate(over="ignore"):
        key = _splitmix(np.array([seed], dtype=np.uint64) ^ np.uint64(0x5EED5EED))
        base = _splitmix(key ^ indices.astype(np.uint64))
        counters = base[:, None] + np.arange(1, streams + 1, dtype=np.uint64)[None, :] * _GOLDEN
        bits = _splitmix(counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@attrs.frozen(kw_only=True)
class ShapesWorld:
    """The endless stream of captioned scenes of one seed; ``resolution`` is the pictures' side in pixels."""

    seed: int = 0
    resolution: int = attrs.field(default=32)
    supersample: int = 4

    @resolution.validator
    def _check_resolution(self, attribute, value: int) -> None:
        if value < 16:
            raise ConfigError("resolution", f"{value} is too small", "at least 16 pixels")

    def draw(self, start: int, count: int) -> dict[str, np.ndarray]:
        """Scenes ``start .. start + count - 1`` as arrays: an index per attribute (:data:`ATTRIBUTES`
        order) and the jitter ``dx``, ``dy``, ``scale``."""
        if start < 0 or count < 0:
            raise ConfigError("start", f"negative range ({start}, {count})", "indices are >= 0")
        u = _uniforms(self.seed, np.arange(start, start + count, dtype=np.uint64), 8)
        colour = (u[:, 1] * len(COLOUR_NAMES)).astype(np.int64)
        background = (u[:, 4] * (len(COLOUR_NAMES) - 1)).astype(np.int64)
        background += background >= colour  # any colour but the object's
        return {
            "shape": (u[:, 0] * len(SHAPES)).astype(np.int64),
            "colour": colour,
            "size": (u[:, 2] * len(SIZES)).astype(np.int64),
            "position": (u[:, 3] * len(POSITIONS)).astype(np.int64),
            "background": background,
            "dx": (2 * u[:, 5] - 1) * POSITION_JITTER,
            "dy": (2 * u[:, 6] - 1) * POSITION_JITTER,
            "scale": 1 + (2 * u[:, 7] - 1) * SCALE_JITTER,
        }

    def scenes(self, start: int, count: int) -> list[Scene]:
        """Scenes ``start .. start + count - 1``."""
        d = self.draw(start, count)
        return [
            Scene(caption=Caption.from_labels({name: d[name][i] for name in ATTRIBUTES}),
                  dx=float(d["dx"][i]), dy=float(d["dy"][i]), scale=float(d["scale"][i]))
            for i in range(count)
        ]

    def captions(self, start: int, count: int) -> list[Caption]:
        """The captions of scenes ``start .. start + count - 1``."""
        return [scene.caption for scene in self.scenes(start, count)]

    def batch(self, start: int, count: int, device: torch.device | str | None = None) -> WorldBatch:
        """Scenes ``start .. start + count - 1``, rendered."""
        d = self.draw(start, count)
        captions = [Caption.from_labels({name: d[name][i] for name in ATTRIBUTES}) for i in range(count)]
        return WorldBatch(
            images=render_arrays(d, resolution=self.resolution, supersample=self.supersample, device=device),
            captions=captions,
            labels={name: torch.as_tensor(d[name], device=device) for name in ATTRIBUTES},
        )

    def training_batch(self, start: int, count: int,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, list[str]]:
        """``(images, caption texts)`` of scenes ``start .. start + count - 1``: :meth:`batch` without
        building :class:`Caption` objects (the training loop's fast path)."""
        d = self.draw(start, count)
        texts = [_TEXT.format(size=SIZES[z], colour=COLOUR_NAMES[c], shape=SHAPES[s], position=POSITIONS[p],
                              background=COLOUR_NAMES[b])
                 for s, c, z, p, b in zip(*(d[name].tolist() for name in ATTRIBUTES))]
        return render_arrays(d, resolution=self.resolution, supersample=self.supersample, device=device), texts

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Caption]:
        batch = self.batch(index, 1)
        return batch.images[0], batch.captions[0]


_TEXT = "a {size} {colour} {shape} at the {position} on a {background} background"


def labels_of(captions: Iterable[Caption], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Integer labels per attribute, ``(B,)`` int64 each, in :data:`ATTRIBUTES` order."""
    rows = [c.labels() for c in captions]
    return {name: torch.tensor([r[name] for r in rows], dtype=torch.long, device=device) for name in ATTRIBUTES}


def _inside(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points ``(u, v)`` (object-centred, in radii, v pointing down) lie inside ``shape``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.85
    if shape == "diamond":
        return u.abs() + v.abs() <= 1.15
    if shape == "triangle":  # apex up, base at v = 0.8, base width 2
        return (v <= 0.8) & (u.abs() <= (v + 1.0) / 1.8)
    if shape == "cross":  # a plus sign of arm half-width 0.3
        a, b = u.abs(), v.abs()
        return ((a <= 0.3) & (b <= 1.0)) | ((b <= 0.3) & (a <= 1.0))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    raise AssertionError(shape)


def upload(data, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """A host array or tensor on ``device``; to a GPU through pinned memory without blocking, so the
    training loop never waits for the GPU to drain before copying the next batch in."""
    tensor = torch.as_tensor(data, dtype=dtype)
    if device is not None and torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


_GRID = np.array(GRID_CENTRES)
_RADII = np.array([SIZE_RADIUS[s] for s in SIZES])
_PALETTE = np.array([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float64)


def render_arrays(d: dict[str, np.ndarray], *, resolution: int = 32, supersample: int = 4,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Draw scenes given as :meth:`ShapesWorld.draw` arrays: ``(B, 3, resolution, resolution)`` float32 in
    ``[-1, 1]``, anti-aliased by averaging ``supersample``² samples per pixel."""
    position = np.asarray(d["position"])
    params = np.stack([
        _GRID[position % 3] + np.asarray(d["dx"]),
        _GRID[position // 3] + np.asarray(d["dy"]),
        _RADII[np.asarray(d["size"])] * np.asarray(d["scale"]),
    ], axis=1)
    cx, cy, radius = upload(params, torch.float32, device)[:, :, None, None].unbind(1)
    colours = np.concatenate([_PALETTE[np.asarray(d["colour"])], _PALETTE[np.asarray(d["background"])]], axis=1)
    colours = upload(colours, torch.float32, device)
    shape_ids = upload(np.asarray(d["shape"]), torch.long, device)[:, None, None]
    side = resolution * supersample
    coords = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side  # fractions of the side
    u = (coords[None, None, :] - cx) / radius  # (B, 1, side)
    v = (coords[None, :, None] - cy) / radius  # (B, side, 1)
    inside = torch.zeros(len(position), side, side, dtype=torch.bool, device=device)
    for shape_id, shape in enumerate(SHAPES):
        inside |= (shape_ids == shape_id) & _inside(shape, u, v)
    coverage = torch.nn.functional.avg_pool2d(inside[:, None].float(), supersample)  # (B, 1, res, res)
    fg, bg = colours[:, :3, None, None], colours[:, 3:, None, None]
    return (bg + (fg - bg) * coverage) / 127.5 - 1.0


def render(scenes: Sequence[Scene], *, resolution: int = 32, supersample: int = 4,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Draw scenes as ``(B, 3, resolution, resolution)`` float32 in ``[-1, 1]``."""
    d = {name: np.array([ATTRIBUTES[name].index(getattr(s.caption, name)) for s in scenes], dtype=np.int64)
         for name in ATTRIBUTES}
    d.update(dx=np.array([s.dx for s in scenes]), dy=np.array([s.dy for s in scenes]),
             scale=np.array([s.scale for s in scenes]))
    return render_arrays(d, resolution=resolution, supersample=supersample, device=device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in ``[-1, 1]`` to ``(B, H, W, 3)`` uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path, *, columns: int = 8, scale: int = 4, pad: int = 2) -> None:
    """Save pictures ``(B, 3, H, W)`` in ``[-1, 1]`` as one PNG grid, each enlarged ``scale`` times."""
    from PIL import Image

    pictures = to_uint8(images)
    count, h, w, _ = pictures.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    sh, sw = h * scale, w * scale
    canvas = np.full((rows * (sh + pad) + pad, columns * (sw + pad) + pad, 3), 128, dtype=np.uint8)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, columns)
        big = picture.repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[pad + r * (sh + pad):pad + r * (sh + pad) + sh, pad + c * (sw + pad):pad + c * (sw + pad) + sw] = big
    Image.fromarray(canvas).save(path)
