"""Tiled maps: slicing a canvas into overlapping tiles and stitching the tiles' maps over each whole image.

Geometry, stated once: an image fills the top-left ``valid_w x valid_h`` pixels of a square canvas (letterbox).
A tile is a ``tile x tile`` window of the canvas at a pixel offset ``(x, y)``; its map of ``h x w`` cells covers
the tile uniformly, each cell ``tile / w`` by ``tile / h`` pixels. Stitched maps are sampled at the centres of
an ``R x R`` grid of equal bins over the image's valid region, as `camray.cam.maps.resample_regions` samples
whole-image maps, so the two kinds of map line up cell for cell.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def tile_stride(tile: int, overlap: float) -> int:
    """Pixels between neighbouring tiles' offsets."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"`overlap` must be in [0, 1), got {overlap}")
    return max(1, round(tile * (1.0 - overlap)))


def canvas_side(tile: int, grid: int, overlap: float) -> int:
    """Side of the square canvas that `grid` tiles of side `tile` span along one axis."""
    if grid < 1:
        raise ValueError(f"`grid` must be >= 1, got {grid}")
    return tile + (grid - 1) * tile_stride(tile, overlap)


def axis_offsets(extent: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering ``[0, extent)`` of one axis, the last one flush with the extent's end (SAHI's rule).

    An extent no longer than a tile gets one tile at 0; otherwise as few tiles at `stride` as cover it.
    """
    if extent <= tile:
        return [0]
    count = 1 + math.ceil((extent - tile) / stride)
    return [min(i * stride, extent - tile) for i in range(count)]


def tile_layout(valid_wh: list[tuple[int, int]], tile: int, stride: int) -> tuple[Tensor, Tensor]:
    """The tiles of each image of a batch, only as many as its valid region needs (a wide image gets fewer rows).

    Returns:
        image_of (Tensor[T], int64): the batch index each tile belongs to, ascending.
        offsets (Tensor[T, 2], int64): each tile's ``(x, y)`` pixel offset in its canvas.
    """
    image_of: list[int] = []
    offsets: list[tuple[int, int]] = []
    for index, (width, height) in enumerate(valid_wh):
        for y in axis_offsets(height, tile, stride):
            for x in axis_offsets(width, tile, stride):
                image_of.append(index)
                offsets.append((x, y))
    return torch.tensor(image_of, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64).view(-1, 2)


def cut_tiles(canvas: Tensor, image_of: Tensor, offsets: Tensor, tile: int) -> Tensor:
    """canvas (Tensor[B, C, S, S]) -> tiles (Tensor[T, C, tile, tile]), in `image_of`'s order."""
    if offsets.numel() and int(offsets.max()) + tile > canvas.shape[-1]:
        raise ValueError(f"a tile at {offsets.max().item()} + {tile} leaves the canvas of {canvas.shape[-1]}")
    pieces = [
        canvas[b, :, y : y + tile, x : x + tile] for b, (x, y) in zip(image_of.tolist(), offsets.tolist(), strict=True)
    ]
    return torch.stack(pieces)


def _tile_axis_weights(span: Tensor, start: Tensor, tile: int, cells: int, grid: int) -> Tensor:
    """(T, grid, cells) bilinear weights of each tile's map cells at the grid's bin centres along one axis.

    Bin centres lie at ``(i + 0.5) * span / grid`` canvas pixels; a centre outside ``[start, start + tile)``
    gets no weight (the tile does not see it), one inside is interpolated between the nearest cell centres and
    held at the edge cells past them.
    """
    centres = (torch.arange(grid, device=span.device) + 0.5) * (span.view(-1, 1) / grid)  # (T, grid)
    local = centres - start.view(-1, 1).to(centres.dtype)
    inside = (local >= 0) & (local < tile)
    position = (local * (cells / tile) - 0.5).clamp(0.0, cells - 1.0)
    low = position.floor().long().clamp_max(cells - 1)
    high = (low + 1).clamp_max(cells - 1)
    fraction = position - low
    weights = torch.zeros(*position.shape, cells, device=span.device)
    weights.scatter_add_(2, low.unsqueeze(-1), (1.0 - fraction).unsqueeze(-1))
    weights.scatter_add_(2, high.unsqueeze(-1), fraction.unsqueeze(-1))
    return weights * inside.unsqueeze(-1)


def stitch_maps(
    tile_maps: Tensor,
    image_of: Tensor,
    offsets: Tensor,
    valid_wh: Tensor,
    tile: int,
    grid: int,
    images: int,
    reduce: str = "mean",
) -> Tensor:
    """Stitches tiles' raw maps into one map per class over each whole image.

    Args:
        tile_maps (Tensor[T, K, h, w]): raw maps of each tile, for its image's classes.
        image_of (Tensor[T]), offsets (Tensor[T, 2]): from `tile_layout`.
        valid_wh (Tensor[B, 2]): each image's valid region in canvas pixels.
        tile: the tiles' side in canvas pixels; grid: R, the output grid's side; images: B.
        reduce: where tiles overlap, their `mean` or their `max`.

    Returns:
        Tensor[B, K, R, R]: float32, sampled at the bin centres over each image's valid region; a bin no tile
        covers is 0 (it does not happen when the tiles come from `tile_layout`).

    Each tile's contribution is two matrix products with per-tile bilinear weights, batched over all tiles.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"`reduce` must be `mean` or `max`, got {reduce!r}")
    _, k, h, w = tile_maps.shape
    device = tile_maps.device
    image_of, offsets = image_of.to(device), offsets.to(device)
    span = valid_wh.to(device).float()[image_of]  # (T, 2)
    rows = _tile_axis_weights(span[:, 1], offsets[:, 1], tile, h, grid)  # (T, R, h)
    cols = _tile_axis_weights(span[:, 0], offsets[:, 0], tile, w, grid)  # (T, R, w)
    sampled = rows.unsqueeze(1) @ tile_maps.float() @ cols.unsqueeze(1).transpose(-1, -2)  # (T, K, R, R)
    covered = (rows.sum(-1) > 0).float().unsqueeze(-1) * (cols.sum(-1) > 0).float().unsqueeze(-2)  # (T, R, R)
    covered = covered.unsqueeze(1)
    index = image_of.view(-1, 1, 1, 1).expand_as(sampled)
    if reduce == "max":
        out = torch.full((images, k, grid, grid), -torch.inf, device=device)
        out.scatter_reduce_(0, index, torch.where(covered > 0, sampled, -torch.inf), reduce="amax")
        return torch.where(torch.isfinite(out), out, 0.0)
    total = torch.zeros(images, k, grid, grid, device=device).index_add_(0, image_of, sampled * covered)
    count = torch.zeros(images, 1, grid, grid, device=device).index_add_(0, image_of, covered)
    return torch.where(count > 0, total / count.clamp_min(1.0), 0.0)
