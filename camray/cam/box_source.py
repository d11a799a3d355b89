"""Which boxes a run draws: around its maps' components or its label maps' regions (`boxes.source`).

A rule of settings alone, with no tensor library: the config resolves it for the fingerprint where the CLI tools
run without torch, and the annotator for its boxes. Why the rule is what it is: `camray.cam.label_map_boxes`.
"""

from __future__ import annotations

from typing import Literal

BoxSource = Literal["auto", "maps", "label_maps"]


def boxes_from_label_maps(source: BoxSource, label_maps: bool, refine: str, classes: str, head: str) -> bool:
    """Whether a run boxes its kept classes' label-map regions (`boxes.source`) rather than its thresholded maps.

    `auto` does where the label maps are written (`label_maps`) and refined by the dense CRF (`refine` `crf`; the
    rule alone thresholds the same maps, more coarsely), and the kept classes are distinct objects: the images'
    labels (`classes` `given`) or a sigmoid `head`'s."""
    if source != "auto":
        return source == "label_maps"
    return label_maps and refine == "crf" and (classes == "given" or head == "sigmoid")
