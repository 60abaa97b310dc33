"""Dynamic tiling (docs/MODEL.md#vision-tiling) and the CLIP/ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.vision.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TilingOptions,
    TilingPlan,
    choose_grid,
    normalize_tiles,
    plan_tiles,
    resize_shortest_edge_and_center_crop,
    split_into_tiles,
    tile_image,
)

# (width, height, min, max) → (columns, rows); worked out by hand from the rule in docs/MODEL.md#vision-tiling.
GRID_TABLE = [
    # the reference's boundaries for squares with max 12
    (633, 633, 1, 12, (1, 1)),
    (634, 634, 1, 12, (2, 2)),
    (950, 950, 1, 12, (2, 2)),
    (951, 951, 1, 12, (3, 3)),
    (448, 448, 1, 12, (1, 1)),
    (4000, 4000, 1, 12, (3, 3)),  # 4×4 = 16 is not a candidate
    # exact aspect: the larger tied grid wins only above half its pixel area
    (896, 448, 1, 12, (2, 1)),
    (2000, 1000, 1, 12, (4, 2)),  # 2 MP > 0.5·448²·8
    (1344, 448, 1, 12, (3, 1)),
    (448, 1344, 1, 12, (1, 3)),
    # closest aspect
    (800, 600, 1, 12, (4, 3)),
    (800, 600, 1, 6, (3, 2)),  # passes through the (1,1)→(2,2) tie (480 000 > 401 408) first
    (1000, 300, 1, 12, (3, 1)),
    (4000, 100, 1, 12, (12, 1)),
    (100, 4000, 1, 12, (1, 12)),
    (640, 480, 1, 1, (1, 1)),
    (5000, 100, 1, 1, (1, 1)),
    (448, 448, 2, 6, (2, 2)),  # min 2 removes (1,1)
]


@pytest.mark.parametrize(("width", "height", "low", "high", "grid"), GRID_TABLE)
def test_choose_grid(width: int, height: int, low: int, high: int, grid: tuple[int, int]) -> None:
    assert choose_grid(width, height, min_tiles=low, max_tiles=high) == grid


@pytest.mark.parametrize(
    ("width", "height", "options", "tiles", "thumbnail"),
    [
        (633, 633, TilingOptions(1, 12), 1, False),  # a 1×1 grid never gets a thumbnail
        (634, 634, TilingOptions(1, 12), 5, True),
        (951, 951, TilingOptions(1, 12), 10, True),
        (800, 600, TilingOptions(1, 12), 13, True),  # the worst case: 3328 tokens
        (800, 600, TilingOptions(1, 12, use_thumbnail=False), 12, False),
        (1920, 1080, TilingOptions(), 1, False),  # real-time default: max 1
    ],
)
def test_plan_counts_tiles_and_thumbnail(
    width: int, height: int, options: TilingOptions, tiles: int, thumbnail: bool
) -> None:
    plan = plan_tiles(width, height, options)
    assert plan.num_tiles == tiles
    assert plan.thumbnail is thumbnail


@pytest.mark.parametrize(("low", "high"), [(0, 1), (2, 1), (1, 13)])
def test_tiling_options_are_validated(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        TilingOptions(low, high)


def _quadrants(width: int, height: int) -> Image.Image:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # TL, TR, BL, BR
    pixels = np.zeros((height, width, 3), np.uint8)
    for index, colour in enumerate(colours):
        rows = slice(0, height // 2) if index < 2 else slice(height // 2, height)
        cols = slice(0, width // 2) if index % 2 == 0 else slice(width // 2, width)
        pixels[rows, cols] = colour
    return Image.fromarray(pixels)


def test_tiles_are_cropped_row_major_then_thumbnail() -> None:
    image = _quadrants(900, 900)
    plan = plan_tiles(900, 900, TilingOptions(1, 12))
    assert (plan.columns, plan.rows, plan.thumbnail) == (2, 2, True)
    tiles = split_into_tiles(image, plan)
    assert [tile.size for tile in tiles] == [(448, 448)] * 5
    centres = [tile.getpixel((224, 224)) for tile in tiles[:4]]
    assert centres == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    thumb = tiles[4]
    assert thumb.getpixel((100, 100)) == (255, 0, 0) and thumb.getpixel((348, 348)) == (255, 255, 0)


def test_wide_grid_tiles_follow_columns_first() -> None:
    stripes = np.zeros((448, 1344, 3), np.uint8)
    stripes[:, 448:896] = 128
    stripes[:, 896:] = 255
    plan = TilingPlan(columns=3, rows=1, thumbnail=False)
    tiles = split_into_tiles(Image.fromarray(stripes), plan)
    assert [t.getpixel((224, 224)) for t in tiles] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_normalisation_is_imagenet_and_identity_geometry_on_448_tiles() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)
    out = normalize_tiles([Image.fromarray(pixels)])
    expected = (torch.from_numpy(pixels).float() / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert out.shape == (1, 3, 448, 448) and out.dtype == torch.float32
    assert (out[0] - expected.permute(2, 0, 1)).abs().max().item() < 1e-5


def test_clip_geometry_resizes_the_shortest_edge_and_centre_crops() -> None:
    image = _quadrants(600, 300)  # → 896×448, crop x 224..672
    out = resize_shortest_edge_and_center_crop(image)
    assert out.size == (448, 448)
    assert out.getpixel((10, 10)) == (255, 0, 0) and out.getpixel((437, 10)) == (0, 255, 0)
    tall = resize_shortest_edge_and_center_crop(Image.new("RGB", (300, 601)))
    assert tall.size == (448, 448)


def test_tile_image_end_to_end() -> None:
    result = tile_image(_quadrants(1000, 500), TilingOptions(1, 12))
    assert (result.plan.columns, result.plan.rows) == (2, 1)
    assert result.pixel_values.shape == (3, 3, 448, 448)
