"""The annotator's mode for several objects an image (`tiling.mode: windows`, the `detect` preset).

The whole image, downscaled to the model's input, and its overlapping tiles are windows, all in one forward pass.
Each window proposes classes (`camray.cam.multi`): a tile its confident top-1 class, the whole image its top
classes, so a small object that never reaches the whole image's top-k is still a candidate. Every window maps its
image's candidates; a window boxes only the classes it proposes, in its own map, where the object it saw is the
map's peak. The boxes of all windows are merged by class-aware NMS (and across classes, one object one box), and
scored by the proposing window's probability times the map's peak in the box.

With given labels (`cam.classes` `given` or `both`), the image's labels are candidates whatever their rank, and
the whole image boxes each of them (the image is known to hold it), scored by the map alone, and no other class
suppresses its boxes; a tile still boxes only its best candidate, where it is confident of it.

Rows keep their meaning: `predictions` are the image's candidates, each scored by the higher of its whole-image
and its proposing tiles' probability; `cams` are the whole image's maps of the kept classes, stitched with the
tiles' (the larger of the two); a box's score is its own (`Components.peak` holds its score over its class's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from camray.cam.boxes import Components, components_of_selected
from camray.cam.classes import ClassChoice
from camray.cam.maps import normalize_maps
from camray.cam.multi import candidate_scores, drop_parts, merge_boxes, window_boxes_to_image, window_proposes
from camray.cam.tiling import canvas_side, cut_tiles, stitch_maps, tile_layout, tile_stride

if TYPE_CHECKING:
    from camray.annotator import AnnotatedBatch, Annotator
    from camray.config import TilingConfig


class DetectMode:
    """Windows propose and box their own classes; boxes merged across windows (see the module docstring)."""

    def __init__(self, annotator: Annotator, tiling: TilingConfig) -> None:
        self.annotator = annotator
        self.tiling = tiling
        self.canvas_size = canvas_side(annotator.input_size, tiling.grid, tiling.overlap)

    def annotate(self, pixels: Tensor, valid_wh: Tensor, given: Tensor | None = None) -> AnnotatedBatch:
        a = self.annotator
        size = a.input_size
        images = pixels.shape[0]
        canvas = a.prepare(pixels, valid_wh)
        device_wh = valid_wh.to(a.device)
        whole = F.interpolate(canvas, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        image_of, offsets = tile_layout(
            [(int(w), int(h)) for w, h in valid_wh.tolist()], size, tile_stride(size, self.tiling.overlap)
        )
        tiles = cut_tiles(canvas, image_of, offsets, size)
        windows = torch.cat([whole, tiles]).contiguous(memory_format=a.memory_format)
        image_of, offsets = image_of.to(a.device), offsets.to(a.device)
        window_image = torch.cat([torch.arange(images, device=a.device), image_of])
        # Each window's region in canvas pixels: a whole image spans its valid region, a tile what of it is valid.
        whole_region = torch.cat([torch.zeros_like(device_wh), device_wh], dim=1)
        tile_extent = torch.minimum(torch.full_like(offsets, size), device_wh[image_of] - offsets)
        region = torch.cat([whole_region, torch.cat([offsets, tile_extent], dim=1)])
        chosen: dict[str, Tensor] = {}
        choices: list[ClassChoice] = []

        def candidates(logits: Tensor) -> Tensor:
            probs = a.probabilities(logits)
            scores = candidate_scores(probs, window_image, images, self.tiling.propose_score)
            # The whole image's own best class ranks first, so that a photo of one object keeps its top-1.
            ranking = scores.scatter(1, probs[:images].argmax(dim=1, keepdim=True), torch.inf)
            choices.append(a.choose(scores, given, ranking))
            chosen.update(probs=probs)
            return choices[0].class_ids[window_image]

        layers = (a.refine_block,) if a.cam_config.refine and a.refine_block is not None else ()
        with torch.autocast(a.device.type, dtype=a.autocast_dtype, enabled=a.autocast_dtype is not None):
            out = a.extractor.extract(windows, a.top_k, candidates, layers)
            activation = out.layers[0].float().relu().mean(1, keepdim=True) if out.layers else None
        raw = out.maps.float()
        choice = choices[0]
        class_ids = choice.class_ids
        window_probs = chosen["probs"].gather(1, out.class_ids)  # (W, K)
        h, w = raw.shape[-2:]
        grid = max(h, w) * a.cam_config.upsample
        # Whole windows: the valid region scaled to the input; tiles: their valid part of the tile.
        extent = torch.cat([device_wh.float() * (size / self.canvas_size), tile_extent.float()])
        window_maps = a._whole_image_maps(raw, extent, size, grid)  # (W, K, grid, grid), each over its region
        window_thresholds = a._thresholds(window_maps)
        label_maps = None
        if a.mask_config is not None:  # the whole image's label scores, with its tiles' where those are higher
            whole_activation = None if activation is None else activation[:images]
            scores = a._label_scores(window_maps[:images], whole_activation, extent[:images], size)
            scores = self._image_maps(scores, raw[images:], image_of, offsets, device_wh, images)
            label_maps = a.label_maps_of(scores, choice.kept, pixels, valid_wh)
        if activation is not None:  # refined as `PlainMode` refines, window by window; sure windows keep plain maps
            refined = a._refine(window_maps, activation, extent, size)
            sure = a._keeps_plain(chosen["probs"].max(dim=1, keepdim=True).values)
            window_maps, window_thresholds = a._maps_keeping_plain(window_maps, refined, sure)
        maps = self._image_maps(window_maps[:images], raw[images:], image_of, offsets, device_wh, images)
        components = None  # where the label maps' regions are boxed (`Annotator._boxed`), no window proposes
        if not a.boxes_from_label_maps:
            components = self._boxes(
                window_maps, window_thresholds, window_probs, region, window_image, device_wh, choice
            )
        thresholds = window_thresholds.view(-1, class_ids.shape[1])[:images]
        return a._boxed(choice, maps, thresholds.flatten(), components, label_maps)

    def _image_maps(
        self, whole: Tensor, tile_raw: Tensor, image_of: Tensor, offsets: Tensor, valid_wh: Tensor, images: int
    ) -> Tensor:
        """(B, K, R, R): the whole image's map of each candidate, or where larger its tiles' stitched map."""
        if tile_raw.shape[0] == 0:
            return whole
        size = self.annotator.input_size
        stitched = stitch_maps(tile_raw, image_of, offsets, valid_wh, size, whole.shape[-1], images, reduce="max")
        return torch.maximum(whole, normalize_maps(stitched))

    def _boxes(
        self,
        window_maps: Tensor,
        window_thresholds: Tensor,
        window_probs: Tensor,
        region: Tensor,
        window_image: Tensor,
        valid_wh: Tensor,
        choice: ClassChoice,
    ) -> Components:
        a = self.annotator
        config = a.box_config
        class_ids, scores = choice.class_ids, choice.scores
        windows, k, grid, _ = window_maps.shape
        images = class_ids.shape[0]
        proposes = window_proposes(
            window_probs, images, self.tiling.propose_score, choice.kept[window_image], choice.given
        )
        found = components_of_selected(
            window_maps.flatten(0, 1),
            window_thresholds,
            proposes.flatten(),
            min_area=config.min_area_fraction * grid * grid,
            max_per_map=config.max_boxes_per_class,
        )
        source = found.map_index  # window * K + slot
        window, slot = source // k, source % k
        image = window_image[window]
        # A given label is known to be in its image: its boxes are scored by their map alone, as rows score them.
        given = choice.given[image, slot]
        weight = window_probs.flatten()[source].where(~given, 1.0)
        box_score = weight * found.peak.float()
        boxes = window_boxes_to_image(found.boxes, grid, region[window], valid_wh[image], grid)
        classes = class_ids[image, slot]
        keep = merge_boxes(boxes, box_score, image, classes, self.tiling.merge_iou, self.tiling.cross_class_iou, given)
        keep = keep[box_score[keep] >= self.tiling.min_box_score]
        if self.tiling.part_inside is not None:
            keep = keep[
                drop_parts(boxes[keep], image[keep], classes[keep], window[keep] >= images, self.tiling.part_inside)
            ]
        map_index = image[keep] * k + slot[keep]
        order = torch.argsort(map_index, stable=True)
        keep, map_index = keep[order], map_index[order]
        kept_boxes = boxes[keep]
        area = (kept_boxes[:, 2] - kept_boxes[:, 0]) * (kept_boxes[:, 3] - kept_boxes[:, 1])
        # Rows score a box as its class's score (1 for a given label) x `peak`: this `peak` makes that the box's own.
        weights = scores.where(~choice.given, 1.0).flatten()[map_index]
        relative = box_score[keep] / weights.clamp_min(1e-12)
        return Components(map_index, kept_boxes, area, box_score[keep], relative)
