"""Named presets: sets of config field values chosen together, applied under the user's own settings.

A preset names values for `cam`, `boxes`, `masks` and `tiling` fields that were measured together
(docs/localization.md); a config file and `--section.field` flags override any of them. A job that names no
preset gets `DEFAULT_PRESET`. Runs record the resolved config, and its fingerprint changes with every value a
preset sets that changes results.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The plain CAM of the paper, one pass at the model's native size: the config fields' own defaults, right for
    # objects that fill the photo.
    "fast": {},
    # One pass still; each class map sharpened by the mean activation of the stride-16 block (SPOL-style), except
    # for images the model classifies with confidence, which keep the plain CAM: better than `fast` on every
    # object size measured, at the same cost. The default: on a held-out set of real photos and objects on textures
    # it nearly doubled `fast`'s box accuracy (0.43 -> 0.83) at 1.04x its cost (2.1x on a CPU with the label maps'
    # CRF below). Where a model has no finer block to refine with (one token grid throughout: ViT, DeiT, EVA), its
    # maps stay plain, boxed at `cam.plain_threshold`.
    # Its label maps: the geometric mean of each plain and refined map, decided by the dense CRF against each
    # image's own background level (0.53 mIoU on the segmentation set's held-out images, `fast` 0.29). With given
    # labels or a sigmoid head, boxes are drawn around those label maps' regions (`boxes.source: auto`).
    "balanced": {
        "cam": {"refine": True, "refine_power": 2.0, "plain_above_score": 0.3},
        "boxes": {"threshold": 0.25},
        "masks": {"refine": "crf", "background": "auto"},
    },
    # Tiled: 3 x 3 overlapping tiles of the input size (at most 10 forwards an image), the stitched tile maps
    # fused with the coarse map and the tiles' stride-16 activation: the best small-object accuracy measured.
    # Confidently classified images keep the plain CAM and skip the tiles; an image whose tiled box covers 15%
    # of it or more holds no small object, and takes `balanced`'s refined whole-image map instead.
    "accurate": {
        "cam": {"refine_power": 2.0, "plain_above_score": 0.4},
        "boxes": {"threshold": 0.15},
        "masks": {"refine": "crf", "background": "auto"},
        "tiling": {
            "enabled": True,
            "grid": 3,
            "overlap": 0.25,
            "fusion": "layer",
            "whole_image_above_area": 0.15,
            "whole_image_threshold": 0.25,
        },
    },
    # Several objects an image (docs, Localization): `balanced`'s refined maps, and the whole image and its 3 x 3
    # tiles as windows that each box the classes they are sure of, merged by NMS. Measured on the multi-object
    # scenes: 7x `balanced`'s object recall (0.32) at 4x its box precision (0.24), AP50 0.23 (`balanced` 0.03), at
    # 0.67 single-object box accuracy (`balanced` 0.70), costing 14-18x `fast` on a CPU; short of its targets.
    "detect": {
        "cam": {"refine": True, "refine_power": 2.0, "plain_above_score": 0.3},
        "boxes": {"threshold": 0.25},
        "masks": {"refine": "crf", "background": "auto"},
        "tiling": {
            "enabled": True,
            "grid": 3,
            "overlap": 0.25,
            "mode": "windows",
            "propose_score": 0.15,
            "part_inside": 0.5,
        },
    },
}


# What a job that names no preset gets (why: `balanced`'s comment).
DEFAULT_PRESET = "balanced"


def preset_values(name: str) -> dict[str, dict[str, Any]]:
    """The sections and field values of preset `name`, copied; a ValueError names the choices."""
    if not isinstance(name, str):
        raise TypeError(f"`preset` must be a string, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"`preset` {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    return {section: dict(fields) for section, fields in PRESETS[name].items()}


def apply_preset(name: str | None, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (config sections as loaded from YAML) laid over preset `name`'s values (`DEFAULT_PRESET`'s if None);
    `data` wins."""
    merged: dict[str, Any] = preset_values(DEFAULT_PRESET if name is None else name)
    for section, fields in data.items():
        if isinstance(fields, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **fields}
        else:
            merged[section] = fields
    return merged
