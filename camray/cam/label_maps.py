"""Label maps: the kept classes' maps of each image -> one map of which class each pixel belongs to.

The rule of the weakly supervised segmentation literature (the seeds of IRN, Ahn et al., CVPR 2019): each pixel
takes the class whose normalised map is highest there, and background where every map is below a threshold.
Between that threshold and a higher one, a pixel may be left undecided (255, "ignore"), as pseudo-label sets
that train segmenters do: the loss skips it. The threshold is a number, or each image's own level
(`own_background`); the decision may be left to the dense CRF over the same scores (`crf_label_maps`).

Conventions, stated once: an image's kept classes are its `K` slots, in the order of its class ids; a label map
holds 0 for background, ``k + 1`` for slot `k`, and 255 (`IGNORE`) for an undecided pixel; it is uint8, so an
image keeps at most `MAX_SLOTS` classes. A label map covers the whole image on its own grid, `(Rh, Rw)` cells
(square `(R, R)` grids of the maps, or a refinement's finer one); pixel `(y, x)` of a `height` x `width` image
reads cell ``(floor((y + 0.5) * Rh / height), floor((x + 0.5) * Rw / width))`` (nearest neighbour, the rule of
`camray.result_rows.mask_rle`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camray.cam.dense_crf import CrfSettings, dense_crf

BACKGROUND = 0
IGNORE = 255
MAX_SLOTS = 254


def check_thresholds(background: float, ignore_below: float | None) -> None:
    """ValueError naming the argument unless ``0 <= background < ignore_below <= 1`` (`ignore_below` optional)."""
    if not 0.0 <= background <= 1.0:
        raise ValueError(f"`background` must be in [0, 1], got {background}")
    if ignore_below is not None and not background < ignore_below <= 1.0:
        raise ValueError(f"`ignore_below` must be above `background` ({background}) and at most 1, got {ignore_below}")


def _check(maps: Tensor, valid: Tensor) -> None:
    if maps.dim() != 4 or valid.shape != maps.shape[:2]:
        raise ValueError(
            f"`maps` must be (B, K, R, R) and `valid` (B, K), got {tuple(maps.shape)} and {tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise TypeError(f"`valid` must be a bool tensor, got {valid.dtype}")
    if maps.shape[1] > MAX_SLOTS:
        raise ValueError(f"a label map holds at most {MAX_SLOTS} classes an image, got {maps.shape[1]}")


def own_background(maps: Tensor, valid: Tensor) -> Tensor:
    """(B,): each image's own background level, the mean over its grid of its highest valid map (0 for an image
    with no valid slot). An image whose objects fill it raises its own bar; one of a few small objects on a quiet
    background lowers it. maps (Tensor[B, K, R, R]), valid (Tensor[B, K]) as `label_maps`'."""
    _check(maps, valid)
    if maps.shape[1] == 0:
        return torch.zeros(maps.shape[0], device=maps.device)
    highest = maps.float().masked_fill(~valid.view(*valid.shape, 1, 1), 0.0).amax(dim=1)
    return highest.mean(dim=(1, 2))


def _per_image(value: float | Tensor, images: int, device: torch.device) -> Tensor:
    """A threshold for every image: (B, 1, 1)."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=torch.float32).view(images, 1, 1)
    return torch.full((images, 1, 1), float(value), device=device)


def label_maps(maps: Tensor, valid: Tensor, background: float | Tensor, ignore_below: float | None = None) -> Tensor:
    """The label map of each image from its kept classes' maps.

    Args:
        maps (Tensor[B, K, R, R]): normalised to [0, 1], each class's map over the whole image.
        valid (Tensor[B, K]): bool, which slots hold a kept class (images keep different numbers of classes;
            the rest is padding, which never wins a pixel).
        background: a pixel whose every valid map is below this is background; a number, or one for each image
            (Tensor[B], as `own_background` gives).
        ignore_below: if given (above `background`), a pixel whose highest map is at least `background` but
            below this is left undecided (`IGNORE`); a class wins only at `ignore_below` or more.

    Returns:
        Tensor[B, R, R] (uint8): 0 background, ``k + 1`` where slot `k`'s map is the highest (ties: the lowest
        slot), `IGNORE` in the band. An image with no valid slot is all background.
    """
    _check(maps, valid)
    if not isinstance(background, Tensor):
        check_thresholds(background, ignore_below)
    b, _, h, w = maps.shape
    if maps.shape[1] == 0:
        return torch.zeros(b, h, w, dtype=torch.uint8, device=maps.device)
    scores = maps.float().masked_fill(~valid.view(*valid.shape, 1, 1), -torch.inf)
    best, slot = scores.max(dim=1)  # the first of equal maxima: ties go to the lowest slot
    out = (slot + 1).to(torch.uint8)
    return _decided(out, best, _per_image(background, b, maps.device), ignore_below)


def _decided(labels: Tensor, best: Tensor, background: Tensor, ignore_below: float | None) -> Tensor:
    """`labels` (B, R, R) with background where the highest map `best` is below `background` (B, 1, 1) and
    `IGNORE` in the band up to `ignore_below`."""
    if ignore_below is not None:
        labels = torch.where(best < ignore_below, torch.full_like(labels, IGNORE), labels)
    return torch.where(best < background, torch.full_like(labels, BACKGROUND), labels)


def crf_label_maps(
    maps: Tensor,
    valid: Tensor,
    background: float | Tensor,
    colours: Tensor,
    aspect: Tensor,
    settings: CrfSettings,
    ignore_below: float | None = None,
    upsample: int = 1,
) -> Tensor:
    """`label_maps` decided by the dense CRF (`camray.cam.dense_crf`) rather than by the rule alone: its unary is
    the rule's own scores, background at `background` and each valid class at its map, normalised per cell, so
    that without pairwise terms it gives `label_maps`' answer; the CRF then pulls each cell towards the labels of
    the cells of like colour. colours (Tensor[B, 3, R, R]), aspect (Tensor[B, 2]): `dense_crf`'s. The ignore band,
    where asked for, is the rule's: cells whose highest map lies between `background` and `ignore_below`.

    Returns Tensor[B, R * upsample, R * upsample] (uint8): the marginals resampled (bilinear) to a grid `upsample`
    times finer before each cell takes its most probable label, so that edges are not the grid's steps."""
    _check(maps, valid)
    b, _, h, w = maps.shape
    level = _per_image(background, b, maps.device)
    # The CRF's time grows with its labels: the slots that no image of the batch fills (where every image keeps
    # fewer classes than there are slots) are left out, and the labels mapped back to their slots.
    filled = valid.any(dim=0)
    if not filled.any():
        return torch.zeros(b, h * upsample, w * upsample, dtype=torch.uint8, device=maps.device)
    slot_of = torch.cat([torch.zeros(1, dtype=torch.long, device=maps.device), filled.nonzero().flatten() + 1])
    maps, valid = maps[:, filled], valid[:, filled]
    k = maps.shape[1]
    scores = maps.float() * valid.view(b, k, 1, 1)
    probabilities = torch.cat([level.view(b, 1, 1, 1).expand(b, 1, h, w), scores], dim=1) + 1e-5
    probabilities = probabilities / probabilities.sum(dim=1, keepdim=True)
    allowed = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=maps.device), valid], dim=1)
    marginals = dense_crf(probabilities, colours, aspect, allowed, settings)
    if upsample > 1:
        marginals = F.interpolate(marginals, scale_factor=upsample, mode="bilinear", align_corners=False)
    labels = slot_of[marginals.argmax(dim=1)].to(torch.uint8)  # 0 background, k + 1 slot k
    if ignore_below is None:
        return labels
    if upsample > 1:
        scores = F.interpolate(scores, scale_factor=upsample, mode="bilinear", align_corners=False)
    best = scores.masked_fill(~valid.view(b, k, 1, 1), -torch.inf).amax(dim=1)
    band = (best >= level) & (best < ignore_below)
    return torch.where(band, torch.full_like(labels, IGNORE), labels)


def _sample_indices(cells: int, pixels: int) -> np.ndarray:
    """(pixels,) the grid cell each pixel of one axis reads (nearest neighbour, pixel centres)."""
    return ((np.arange(pixels) + 0.5) * (cells / pixels)).astype(np.intp)


def resize_label_map(label_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8[Rh, Rw] covering the whole image -> uint8[height, width], nearest neighbour (the RLEs' rule)."""
    grid_h, grid_w = label_map.shape
    return label_map[np.ix_(_sample_indices(grid_h, height), _sample_indices(grid_w, width))]


def label_runs(label_map: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The image's pixels in COCO's order (column-major) as runs of equal labels: (values, lengths), neighbours
    never equal. Built from the grid's cells: cost grows with the grid height times the image width, not with
    the pixel count."""
    grid_h, grid_w = label_map.shape
    rows = _sample_indices(grid_h, height)
    cols = _sample_indices(grid_w, width)
    row_repeats = np.bincount(rows, minlength=grid_h)  # original rows per grid row
    # One grid cell per (original column, grid row), weighted by how many original rows that grid row covers.
    cells = (cols[:, None] * grid_h + np.arange(grid_h)[None, :]).ravel()
    value = label_map.T.ravel()[cells]
    length = np.tile(row_repeats, width)
    present = length > 0
    value, length = value[present], length[present]
    starts = np.flatnonzero(np.r_[True, value[1:] != value[:-1]])
    return value[starts], np.add.reduceat(length, starts)


def _rle(counts: np.ndarray, width: int, height: int) -> dict[str, Any]:
    # Imported here: the label rule runs where pycocotools is not installed (a bare GPU host's benchmark).
    from pycocotools import mask as coco_mask

    rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode()}


def label_map_rles(label_map: np.ndarray, slots: int, width: int, height: int) -> list[dict[str, Any]]:
    """One image's label map -> one COCO RLE (compressed, as pycocotools writes it) per slot, at `height` x
    `width`: entry `k` is the mask of the pixels labelled ``k + 1`` (empty where the slot won none). Masks of
    one image never overlap, background and `IGNORE` pixels belong to none; the full-size mask is never built,
    and the image's runs are walked once for all slots.

    label_map (uint8[Rh, Rw]): covers the whole image (see the module docstring)."""
    return value_rles(label_map, list(range(1, slots + 1)), width, height)


def value_rles(label_map: np.ndarray, values: list[int], width: int, height: int) -> list[dict[str, Any]]:
    """`label_map_rles` for any label `values` (each an RLE of the pixels holding it; `IGNORE` gives the
    undecided pixels), the image's runs walked once for all of them."""
    runs_of, lengths = label_runs(label_map, width, height)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    order = np.argsort(runs_of, kind="stable")  # each label's runs together, in image order
    ordered = runs_of[order]
    out = []
    for value in values:
        runs = order[np.searchsorted(ordered, value, "left") : np.searchsorted(ordered, value, "right")]
        # Equal neighbours were merged, so each run of the label is a whole stretch of the mask; COCO counts
        # alternate outside / inside, starting outside (0 where the mask starts at the first pixel).
        counts = np.empty(2 * runs.size + 1, dtype=np.int64)
        counts[0:-1:2] = starts[runs] - np.r_[0, ends[runs][:-1]]
        counts[1::2] = lengths[runs]
        counts[-1] = width * height - (ends[runs][-1] if runs.size else 0)
        out.append(_rle(counts if counts[-1] else counts[:-1], width, height))
    return out
