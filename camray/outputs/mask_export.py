"""`camray export masks`: an output's label maps as training data for segmentation, in PASCAL VOC's layout.

`DEST/SegmentationClass/<path>.png` per image: an indexed (mode `P`) PNG with VOC's palette
(`camray.outputs.label_png`), pixel value k (1..N) the class on line k of `DEST/classes.txt`, 0 background, 255
undecided (the results' `ignore_mask`, and the pixels of classes `classes` leaves out: objects, only not of the
classes asked for, so not background either). `<path>` is the input's path under the inputs' common folder, as
the YOLO export lays out its label files (for a sample of a shard or table, the container's path without its
suffix, then the sample's key). `DEST/images.txt` lists the input URIs in the order of the files. The classes are
those that occur, in class id order; torchvision's `VOCSegmentation` and MMSegmentation's VOC-style datasets read
the PNGs as they are, and `python -m camray.evaluation.segmentation --pred DEST --truth ...` scores them.

Each row's label map is rebuilt from its `masks` (`camray.io.schema.label_map`); a row written without label maps
(schema version 2, or `masks.label_maps` off) gives the one class of its `mask`. Like the other exports it takes
one run's rows, or the newest row of every image across succeeded runs, and streams them: two passes, the first
for the common folder and the classes (both needed before the first file), the second writing one PNG at a time.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from camray.errors import UsageError
from camray.io.output import Output
from camray.io.schema import decode_mask, label_map
from camray.outputs.export import _rows, common_folder, export_path
from camray.outputs.label_png import CLASSES_FILE, IGNORE, MAX_CLASSES, write_classes, write_label_png

logger = logging.getLogger(__name__)

PNG_FOLDER = "SegmentationClass"
IMAGES_FILE = "images.txt"


def _entries(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's class masks: its label map's, or for a row without one, its first kept class's `mask`."""
    if row.get("masks") is not None:
        return row["masks"]
    mask = row.get("mask")
    return [] if mask is None else [{**mask, "label": None}]


def _named_classes(output: Output, run_id: str | None, classes: Sequence[str] | None) -> dict[int, str]:
    """First pass, the class names: every class id of the rows' masks, named by its label (a row without label maps
    names its `mask`'s class by its boxes or predictions)."""
    names: dict[int, str] = {}
    for row in _rows(output, run_id, ["image_uri", "masks", "mask", "boxes", "predictions"]):
        known = {entry["class_id"]: entry["label"] for entry in [*(row["predictions"] or []), *(row["boxes"] or [])]}
        for entry in _entries(row):
            label = entry["label"] or known.get(entry["class_id"]) or str(entry["class_id"])
            names.setdefault(entry["class_id"], label)
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    # Two classes of one name (ImageNet has two cranes) stay apart in classes.txt: each named with its id too.
    names = {class_id: f"{name} ({class_id})" if counts[name] > 1 else name for class_id, name in names.items()}
    if not classes:
        return names
    wanted = {name.strip().lower() for name in classes}
    chosen = {class_id: name for class_id, name in names.items() if name.lower() in wanted or str(class_id) in wanted}
    for name in wanted - {n.lower() for n in chosen.values()} - {str(i) for i in chosen}:
        logger.warning("class %r is in no mask of these results", name)
    return chosen


def _label_map(row: dict[str, Any], values: dict[int, int]) -> np.ndarray:
    """The row's label map in the export's values; the pixels of classes not exported are undecided."""
    if row.get("masks") is not None:
        out = label_map(row, values)
        assert out is not None
        others = [entry for entry in row["masks"] if entry["class_id"] not in values]
    else:
        out = np.zeros((row["height"], row["width"]), dtype=np.uint8)
        others = []
        mask = row.get("mask")
        if mask is not None:
            if mask["class_id"] in values:
                out[decode_mask(mask)] = values[mask["class_id"]]
            else:
                others = [mask]
    for entry in others:
        out[decode_mask(entry)] = IGNORE
    return out


def write_masks(
    output: Output,
    dest: str | Path,
    run_id: str | None = None,
    classes: Sequence[str] | None = None,
) -> Path:
    """Writes the label maps (see the module docstring) under `dest`; returns `dest`. Each export replaces the
    `SegmentationClass/` of the one before it; two images that would share a file stop it, naming the second."""
    names = _named_classes(output, run_id, classes)
    if len(names) > MAX_CLASSES:
        raise UsageError(
            f"{len(names)} classes occur, more than an indexed PNG holds besides 0 and 255 ({MAX_CLASSES}): "
            "export fewer with --classes"
        )
    values = {class_id: value for value, class_id in enumerate(sorted(names), start=1)}
    common: str | None = None
    for row in _rows(output, run_id, ["image_uri", "container_uri"]):
        common = common_folder(common, row)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # Written to a fresh folder that replaces `SegmentationClass/` at the end: a file that already exists there is
    # another image's of this export (a clash), found without remembering every name written.
    partial = Path(tempfile.mkdtemp(prefix=".masks-", dir=dest))
    written = skipped = 0
    columns = ["image_uri", "container_uri", "width", "height", "masks", "ignore_mask", "mask"]
    try:
        with (dest / IMAGES_FILE).open("w", encoding="utf-8") as images:
            for row in _rows(output, run_id, columns):
                if row.get("masks") is None and row.get("mask") is None:
                    skipped += 1  # neither a label map nor a mask: an image that kept no class under schema 2
                name = export_path(row, common or "", ".png")
                path = partial / name
                if path.exists():
                    raise UsageError(
                        f"{row['image_uri']} would share the label map {name} with an image listed before it in "
                        f"{dest / IMAGES_FILE}; export them separately"
                    )
                write_label_png(path, _label_map(row, values))
                images.write(f"{row['image_uri']}\n")
                written += 1
        shutil.rmtree(dest / PNG_FOLDER, ignore_errors=True)
        partial.rename(dest / PNG_FOLDER)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    write_classes(dest, [names[class_id] for class_id in sorted(names)])
    if skipped:
        logger.warning("%d images have no label map nor mask: written as background", skipped)
    logger.info("%d label maps, %d classes written to %s (%s)", written, len(names), dest, CLASSES_FILE)
    return dest
