"""The captioned-shapes world: determinism, caption round trips, attribute coverage, rendering."""

from __future__ import annotations

import itertools

import pytest
import torch

from stitchkit.errors import ConfigError
from stitchkit.shapes.world import (
    ATTRIBUTES,
    COLOURS,
    Caption,
    Scene,
    ShapesWorld,
    parse_caption,
    render,
    vocabulary,
)


def test_same_seed_and_index_give_the_same_scene_in_any_order():
    world = ShapesWorld(seed=3)
    whole = world.batch(0, 12)
    part = world.batch(5, 4)
    assert whole.captions[5:9] == part.captions
    assert torch.equal(whole.images[5:9], part.images)
    assert torch.equal(ShapesWorld(seed=3).batch(0, 12).images, whole.images)
    image, caption = world[7]
    assert caption == whole.captions[7] and torch.equal(image, whole.images[7])


def test_different_seeds_give_different_streams():
    a = ShapesWorld(seed=0).captions(0, 50)
    b = ShapesWorld(seed=1).captions(0, 50)
    assert sum(x == y for x, y in zip(a, b)) < 10


def test_images_are_in_range_with_the_right_shape_and_colours():
    batch = ShapesWorld(seed=0).batch(0, 16)
    assert batch.images.shape == (16, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    for image, caption in zip(batch.images, batch.captions):
        corner = image[:, 0, 0] if caption.position != "top left" else image[:, -1, -1]
        expected = torch.tensor(COLOURS[caption.background], dtype=torch.float32) / 127.5 - 1
        assert torch.allclose(corner, expected, atol=1e-5)


def test_every_attribute_value_occurs_and_backgrounds_differ_from_objects():
    captions = ShapesWorld(seed=0).captions(0, 3000)
    for name, values in ATTRIBUTES.items():
        assert {getattr(c, name) for c in captions} == set(values), name
    assert all(c.background != c.colour for c in captions)
    # Roughly uniform: every value within a factor of 2 of its expected share.
    for name, values in ATTRIBUTES.items():
        counts = [sum(getattr(c, name) == v for c in captions) for v in values]
        assert min(counts) > len(captions) / len(values) / 2, name


@pytest.mark.parametrize("caption", ShapesWorld(seed=5).captions(0, 40))
def test_caption_text_round_trips(caption):
    text = caption.to_text()
    assert parse_caption(text) == caption
    assert parse_caption("  " + text.upper() + " ") == caption
    assert Caption.from_labels(caption.labels()) == caption
    assert set(text.split()) <= set(vocabulary())


def test_every_combination_round_trips():
    for shape, colour, size, position, background in itertools.product(*ATTRIBUTES.values()):
        if colour == background:
            continue
        caption = Caption(shape=shape, colour=colour, size=size, position=position, background=background)
        assert parse_caption(caption.to_text()) == caption


def test_bad_captions_are_config_errors():
    with pytest.raises(ConfigError, match="caption: cannot parse"):
        parse_caption("a cat on a mat")
    with pytest.raises(ConfigError, match="caption.shape: unknown shape 'hexagon'"):
        parse_caption("a small red hexagon at the center on a blue background")
    with pytest.raises(ConfigError, match="caption.background"):
        Caption(shape="circle", colour="red", size="small", position="center", background="red")


def test_size_and_position_show_in_the_picture():
    def coverage(**kw) -> torch.Tensor:
        caption = Caption(shape="square", colour="white", background="black", **kw)
        image = render([Scene(caption=caption)])[0]
        return (image[0] + 1) / 2 > 0.5

    small = coverage(size="small", position="center")
    large = coverage(size="large", position="center")
    assert large.sum() > 2 * small.sum()
    left = coverage(size="small", position="top left").nonzero().float().mean(0)
    right = coverage(size="small", position="bottom right").nonzero().float().mean(0)
    assert (left < 12).all() and (right > 20).all()
