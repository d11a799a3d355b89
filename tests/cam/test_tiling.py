"""Tile layout and stitching on plain tensors, against obvious per-pixel loops."""

from __future__ import annotations

import math

import pytest
import torch

from camray.cam.maps import resample_regions
from camray.cam.tiling import axis_offsets, canvas_side, cut_tiles, stitch_maps, tile_layout, tile_stride


def test_canvas_holds_grid_tiles_at_stride() -> None:
    assert tile_stride(224, 0.25) == 168
    assert canvas_side(224, 3, 0.25) == 224 + 2 * 168
    assert canvas_side(224, 1, 0.5) == 224
    with pytest.raises(ValueError, match="overlap"):
        tile_stride(224, 1.0)


@pytest.mark.parametrize("extent", [1, 100, 224, 225, 300, 392, 560, 561])
def test_axis_offsets_cover_the_extent_within_it(extent: int) -> None:
    tile, stride = 224, 168
    offsets = axis_offsets(extent, tile, stride)
    assert offsets[0] == 0 and offsets == sorted(offsets)
    covered = torch.zeros(extent, dtype=torch.bool)
    for start in offsets:
        covered[start : start + tile] = True
    assert bool(covered.all())
    if extent > tile:  # flush with the end, never past it, and no more tiles than the stride needs
        assert offsets[-1] == extent - tile
        assert len(offsets) == 1 + math.ceil((extent - tile) / stride)
        assert all(b - a <= stride for a, b in zip(offsets, offsets[1:], strict=False))


def test_layout_gives_a_wide_image_fewer_rows() -> None:
    image_of, offsets = tile_layout([(560, 560), (560, 315), (100, 560)], 224, 168)
    counts = torch.bincount(image_of).tolist()
    assert counts == [9, 6, 3]
    assert offsets[image_of == 1][:, 1].unique().tolist() == [0, 315 - 224]


def test_cut_tiles_are_the_canvas_windows() -> None:
    canvas = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)
    image_of, offsets = tile_layout([(40, 40), (40, 25)], 16, 12)
    tiles = cut_tiles(canvas, image_of, offsets, 16)
    for t, (b, (x, y)) in enumerate(zip(image_of.tolist(), offsets.tolist(), strict=True)):
        assert torch.equal(tiles[t], canvas[b, :, y : y + 16, x : x + 16])
    with pytest.raises(ValueError, match="leaves the canvas"):
        cut_tiles(canvas, image_of, offsets + 30, 16)


def _slow_stitch(tile_maps, image_of, offsets, valid_wh, tile, grid, images, reduce):
    """Per output cell: the cell centre in canvas pixels, then each covering tile's bilinear sample, reduced."""
    _, k, h, w = tile_maps.shape
    out = torch.zeros(images, k, grid, grid, dtype=torch.float64)
    for b in range(images):
        width, height = valid_wh[b].tolist()
        for i in range(grid):
            cy = (i + 0.5) * height / grid
            for j in range(grid):
                cx = (j + 0.5) * width / grid
                samples = []
                for t in range(len(image_of)):
                    if image_of[t] != b:
                        continue
                    ox, oy = offsets[t].tolist()
                    if not (ox <= cx < ox + tile and oy <= cy < oy + tile):
                        continue
                    px = min(max((cx - ox) * w / tile - 0.5, 0.0), w - 1.0)
                    py = min(max((cy - oy) * h / tile - 0.5, 0.0), h - 1.0)
                    x0, y0 = int(math.floor(px)), int(math.floor(py))
                    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
                    fx, fy = px - x0, py - y0
                    m = tile_maps[t].double()
                    value = (
                        m[:, y0, x0] * (1 - fx) * (1 - fy)
                        + m[:, y0, x1] * fx * (1 - fy)
                        + m[:, y1, x0] * (1 - fx) * fy
                        + m[:, y1, x1] * fx * fy
                    )
                    samples.append(value)
                if samples:
                    stacked = torch.stack(samples)
                    out[b, :, i, j] = stacked.mean(0) if reduce == "mean" else stacked.amax(0)
    return out


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_stitch_matches_per_cell_loop(reduce: str) -> None:
    generator = torch.Generator().manual_seed(0)
    valid = [(40, 40), (40, 27), (17, 40)]
    image_of, offsets = tile_layout(valid, 16, 12)
    tile_maps = torch.randn(len(image_of), 2, 4, 4, generator=generator)
    valid_wh = torch.tensor(valid)
    fast = stitch_maps(tile_maps, image_of, offsets, valid_wh, 16, 11, 3, reduce)
    slow = _slow_stitch(tile_maps, image_of, offsets, valid_wh, 16, 11, 3, reduce)
    torch.testing.assert_close(fast.double(), slow, rtol=1e-5, atol=1e-5)


def test_one_tile_over_the_whole_image_is_the_whole_image_map() -> None:
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 3, 7, 7, generator=generator)
    valid_wh = torch.tensor([[224, 224], [224, 150]])
    image_of, offsets = torch.tensor([0, 1]), torch.zeros(2, 2, dtype=torch.int64)
    stitched = stitch_maps(maps, image_of, offsets, valid_wh, 224, 56, 2)
    whole = resample_regions(maps, valid_wh.float() * (7 / 224), 56)
    torch.testing.assert_close(stitched, whole, rtol=1e-5, atol=1e-5)


def test_stitched_blob_lands_where_its_tile_saw_it() -> None:
    """A peak in the bottom-right tile's map comes out in the bottom-right of the image's map."""
    image_of, offsets = tile_layout([(40, 40)], 16, 12)
    maps = torch.zeros(len(image_of), 1, 4, 4)
    last = int(torch.argmax(offsets.sum(1)))
    maps[last, 0, 3, 3] = 1.0
    stitched = stitch_maps(maps, image_of, offsets, torch.tensor([[40, 40]]), 16, 40, 1)
    row, col = divmod(int(stitched[0, 0].argmax()), 40)
    assert row >= 34 and col >= 34
