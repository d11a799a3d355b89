"""Heatmaps -> connected components -> boxes, batched on the maps' device.

Conventions, stated once: a map is `(N, H, W)`; a box is ``(x0, y0, x1, y1)`` in pixel-edge coordinates of
its map, so a component covering columns 3..5 has ``x0 = 3, x1 = 6`` and ``0 <= x0 < x1 <= W``. Scaling such a
box by ``original_width / W`` gives original-image pixels with no half-pixel offsets. Components are
8-connected, as in the CAM paper's reference code (OpenCV contours).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Components:
    """Connected components of a batch of thresholded maps, one entry per kept component.

    map_index (Tensor[M]): which map each component belongs to; sorted ascending, and within a map the
        components are ordered by `mass`, largest first.
    boxes (Tensor[M, 4]): ``(x0, y0, x1, y1)`` in map pixel-edge coordinates.
    area (Tensor[M]): pixels in the component.
    mass (Tensor[M]): sum of the map's values over the component.
    peak (Tensor[M]): the map's largest value in the component.
    """

    map_index: Tensor
    boxes: Tensor
    area: Tensor
    mass: Tensor
    peak: Tensor


def label_components(mask: Tensor, check_every: int = 4) -> Tensor:
    """Labels the 8-connected components of each map in `mask`, on its device.

    Args:
        mask (Tensor[N, H, W]): bool foreground.
        check_every: propagation steps between convergence checks (each check syncs the device).

    Returns:
        Tensor[N, H, W] (int64): 0 on background; on each component, the largest flat index + 1 of its
        pixels, so unique within its map.

    The largest label is propagated through each component with 3x3 max-pooling, which batches every map at
    once and never leaves the device. The CPU boxes with OpenCV instead (`statistics_by_opencv`).
    """
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(f"`mask` must be a bool tensor of shape (N, H, W), got {mask.dtype} {tuple(mask.shape)}")
    _, h, w = mask.shape
    if h * w >= 2**24:
        raise ValueError(f"`mask` maps of {h}x{w} are too large to label exactly in float32")
    seeds = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, h, w)
    labels = torch.where(mask, seeds, torch.zeros((), device=mask.device))
    while True:
        previous = labels
        for _ in range(check_every):
            grown = F.max_pool2d(labels.unsqueeze(1), kernel_size=3, stride=1, padding=1).squeeze(1)
            labels = torch.where(mask, grown, labels)
        if torch.equal(labels, previous):
            return labels.long()


Statistics = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]  # map_index, boxes, area, mass, peak; any order


def statistics_by_scatter(maps: Tensor, mask: Tensor) -> Statistics:
    """Per-component statistics on the maps' device: labels, then scatter reductions into one slot per
    (map, label); no host round trip but the convergence checks of the labelling."""
    n, h, w = maps.shape
    device = maps.device
    labels = label_components(mask)
    slots = n * (h * w + 1)
    key = (torch.arange(n, device=device).view(n, 1, 1) * (h * w + 1) + labels).flatten()
    fg = mask.flatten()
    accumulate = torch.promote_types(maps.dtype, torch.float32)  # half-precision maps sum in float32
    key, values = key[fg], maps.flatten()[fg].to(accumulate)
    ys = torch.arange(h, device=device).view(1, h, 1).expand(n, h, w).flatten()[fg]
    xs = torch.arange(w, device=device).view(1, 1, w).expand(n, h, w).flatten()[fg]

    def reduce(src: Tensor, how: str, fill: float) -> Tensor:
        out = torch.full((slots,), fill, dtype=src.dtype, device=device)
        return out.scatter_reduce(0, key, src, reduce=how, include_self=True)

    area = torch.zeros(slots, device=device).index_add_(0, key, torch.ones(key.numel(), device=device))
    present = torch.nonzero(area > 0).squeeze(1)
    mass = torch.zeros(slots, dtype=accumulate, device=device).index_add_(0, key, values)[present]
    peak = reduce(values, "amax", float("-inf"))[present]
    boxes = torch.stack(
        [
            reduce(xs, "amin", w)[present],
            reduce(ys, "amin", h)[present],
            reduce(xs, "amax", -1)[present] + 1,
            reduce(ys, "amax", -1)[present] + 1,
        ],
        dim=1,
    ).float()
    return present // (h * w + 1), boxes, area[present], mass, peak


def statistics_by_opencv(maps: Tensor, mask: Tensor) -> Statistics:
    """Per-component statistics on the CPU: the maps stacked into one tall image with a background row
    between them, so one OpenCV call labels every map and returns each component's box and area; mass and
    peak are two reductions over the foreground pixels' labels (about 2.5 ms for a batch of 80 maps of
    56x56, against 24 ms for the scatter path on the CPU)."""
    import cv2

    n, h, w = maps.shape
    stacked = np.zeros((n, h + 1, w), dtype=np.uint8)
    foreground = mask.numpy()
    stacked[:, :h] = foreground
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        stacked.reshape(n * (h + 1), w), connectivity=8, ltype=cv2.CV_32S
    )
    labels = labels.reshape(n, h + 1, w)[:, :h][foreground]
    values = (maps if maps.dtype in (torch.float32, torch.float64) else maps.float()).numpy()[foreground]
    mass = np.bincount(labels, weights=values, minlength=count)[1:]
    peak = np.full(count, -np.inf, dtype=values.dtype)
    np.maximum.at(peak, labels, values)
    stats = torch.from_numpy(stats[1:].astype(np.int64))
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    map_index = top // (h + 1)
    y0 = top - map_index * (h + 1)
    boxes = torch.stack(
        [left, y0, left + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]], dim=1
    ).float()
    accumulate = torch.promote_types(maps.dtype, torch.float32)
    return (
        map_index,
        boxes,
        stats[:, cv2.CC_STAT_AREA].float(),
        torch.from_numpy(mass).to(accumulate),
        torch.from_numpy(peak[1:]),
    )


def components_of_selected(
    maps: Tensor, threshold: Tensor | float, selected: Tensor, min_area: float, max_per_map: int
) -> Components:
    """`components_from_maps` of the maps that `selected` (Tensor[N], bool) marks, with `map_index` into all N
    maps: the others (a batch's padding slots, windows that propose no class) are never boxed. `threshold` is
    one value or one per map of all N."""
    index = torch.nonzero(selected).flatten()
    if isinstance(threshold, Tensor):
        threshold = threshold[index]
    found = components_from_maps(maps[index], threshold, min_area=min_area, max_per_map=max_per_map)
    return Components(index[found.map_index], found.boxes, found.area, found.mass, found.peak)


def components_from_maps(
    maps: Tensor,
    threshold: Tensor | float,
    valid: Tensor | None = None,
    min_area: Tensor | float = 1.0,
    max_per_map: int = 1,
) -> Components:
    """Thresholds each map and returns the bounding boxes of its largest connected components.

    Args:
        maps (Tensor[N, H, W]): float heatmaps.
        threshold (Tensor[N] or float): a pixel is foreground where ``map >= threshold``.
        valid (Tensor[N, H, W], optional): bool; pixels outside it are never foreground (letterbox padding).
        min_area (Tensor[N] or float): components smaller than this many pixels are dropped, except that a
            map's largest component is always kept so that every map with foreground yields a box.
        max_per_map: keep at most this many components per map, by `mass`.
    """
    if maps.dim() != 3:
        raise ValueError(f"`maps` must have shape (N, H, W), got {tuple(maps.shape)}")
    if max_per_map < 1:
        raise ValueError(f"`max_per_map` must be at least 1, got {max_per_map}")
    n, h, w = maps.shape
    device = maps.device
    if n == 0:  # a batch none of whose images keeps a class (a sigmoid head's, every score below its bound)
        empty = torch.zeros(0, device=device)
        return Components(empty.long(), torch.zeros(0, 4, device=device), empty, empty, empty)
    threshold = torch.as_tensor(threshold, dtype=maps.dtype, device=device).expand(n)
    mask = maps >= threshold.view(n, 1, 1)
    if valid is not None:
        mask &= valid
    if device.type == "cpu":
        map_index, boxes, area, mass, peak = statistics_by_opencv(maps, mask)
    else:
        map_index, boxes, area, mass, peak = statistics_by_scatter(maps, mask)

    # Order by map, then by mass descending: sort by mass, then stable-sort by map.
    order = torch.argsort(mass, descending=True, stable=True)
    order = order[torch.argsort(map_index[order], stable=True)]
    map_index, boxes, area, mass, peak = map_index[order], boxes[order], area[order], mass[order], peak[order]
    rank = torch.arange(map_index.numel(), device=device) - torch.searchsorted(map_index, map_index)
    min_area = torch.as_tensor(min_area, dtype=torch.float32, device=device).expand(n)
    keep = (rank < max_per_map) & ((rank == 0) | (area >= min_area[map_index]))
    return Components(map_index[keep], boxes[keep], area[keep], mass[keep], peak[keep])
