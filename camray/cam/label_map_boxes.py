"""Boxes from label maps: each kept class's region of its image's label map, boxed component by component.

A thresholded CAM boxes the part of an object that drives the class, bounded by the grid's cells; the label map's
region of the class, decided by the dense CRF against the photo's colours (`camray.cam.label_maps`), follows the
object's edges and stops where a neighbouring object of another kept class starts. That is only true where the
kept classes are distinct objects: an image's given labels, or a sigmoid head's classes, each scored on its own.
A softmax head's top-k are rivals for one object (five cat breeds), and the label map splits that object between
them, so its boxes come from the maps (docs/localization-multi.md). When a run takes which:
`camray.cam.box_source`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camray.cam.boxes import Components, components_of_selected


def label_map_components(
    maps: Tensor, label_maps: Tensor, kept: Tensor, min_area_fraction: float, max_per_map: int
) -> Components:
    """The components of each kept slot's region of its image's label map, as `components_from_maps` gives them
    for the maps, in the maps' pixel-edge coordinates.

    Args:
        maps (Tensor[B, K, R, R]): the kept classes' maps, normalised; a component's `peak` and `mass` are its
            class map's, resampled (bilinear) to the label map's grid, so a box scores as a map's box would.
        label_maps (Tensor[B, Rh, Rw], uint8): 0 background, ``k + 1`` slot `k`, 255 undecided
            (`camray.cam.label_maps`), covering the whole image as the maps do.
        kept (Tensor[B, K], bool): the image's own slots; padding is never boxed.
        min_area_fraction, max_per_map: `boxes.min_area_fraction` and `boxes.max_boxes_per_class`.
    """
    b, k, r, _ = maps.shape
    grid_h, grid_w = label_maps.shape[-2:]
    slots = torch.arange(1, k + 1, device=label_maps.device).view(1, k, 1, 1)
    region = label_maps.to(maps.device).unsqueeze(1).long() == slots
    # Every pixel of a region is foreground, however weak its map there: the floor keeps it above 0.
    values = F.interpolate(maps.float(), size=(grid_h, grid_w), mode="bilinear", align_corners=False).clamp_min(1e-4)
    valued = torch.where(region, values, torch.zeros((), device=maps.device)).reshape(b * k, grid_h, grid_w)
    found = components_of_selected(
        valued,
        1e-5,
        kept.to(maps.device).flatten(),
        min_area=min_area_fraction * grid_h * grid_w,
        max_per_map=max_per_map,
    )
    scale = torch.tensor([r / grid_w, r / grid_h, r / grid_w, r / grid_h], device=found.boxes.device)
    cell = r * r / (grid_h * grid_w)  # a label-map pixel in map pixels, for `area` and `mass`
    return Components(found.map_index, found.boxes * scale, found.area * cell, found.mass * cell, found.peak)
