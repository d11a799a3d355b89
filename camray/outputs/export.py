"""`camray export`: an output's boxes as COCO instances JSON or as YOLO label files.

Both take the results of one run, or, without a run, the newest row of every image across succeeded runs;
boxes can be kept by score (`min_score`, on the box's score = class probability x the map's peak inside
the box; the peak alone for a given label's class) and by class (class ids or labels).

COCO: `images` (`id`, `file_name` = the input URI, `width`, `height`); `categories` for the classes that
occur, `id` = the model's class id (for an ImageNet head the ImageNet index 0-999, as in the evaluator's truth
files), `name` its label (`model.labels`), `supercategory` the model; `annotations` with `bbox` `[x, y, w, h]`
in pixels, `score`, `category_id`, `area`, `iscrowd` 0, and `segmentation`: the COCO RLE of its class's mask in
the image's label map (`masks`) inside the box, its `area` the mask's pixels there (for outputs written without
label maps, the first kept class's `mask`, for that class's boxes).

YOLO: `labels/<path>.txt` per image, one `class cx cy w h` line per box (normalised to the image, class =
line number in `classes.txt`), `<path>` being the input's path under the inputs' common folder (for a sample of
a shard or table, the container's path without its suffix, then the sample's key: `shard-000/000123.txt`);
`classes.txt`, one label a line; `images.txt`, the input URIs in the order of the label files.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from camray.errors import UsageError
from camray.io.containers import layout_path
from camray.io.output import Output
from camray.io.schema import decode_mask

logger = logging.getLogger(__name__)

COLUMNS = ["image_uri", "width", "height", "model", "boxes", "mask", "masks"]
# `camray export`'s default `--min-score`: the lowest box score at which the default preset's boxes cover an object
# of their class at least half the time on the evaluation set (0.54 there; 0.46 for `fast`, 0.54 for `accurate`).
# A box below it is written to the results all the same, its score saying it is a guess (docs, Localization).
DEFAULT_MIN_SCORE = 0.2


def _rows(output: Output, run_id: str | None, columns: list[str] = COLUMNS) -> Iterator[dict[str, Any]]:
    """The rows in `image_uri` order, one record batch in memory at a time."""
    output.check_exists()
    for batch in output.iter_latest_results(run_id, columns):
        yield from batch.to_pylist()


def _class_filter(output: Output, run_id: str | None, classes: Sequence[str] | None) -> set[int] | None:
    """The class ids named by `classes` (ids or labels, case-insensitive); None keeps every class."""
    if not classes:
        return None
    labels: dict[str, int] = {}
    if any(not name.strip().isdigit() for name in classes):
        for row in _rows(output, run_id, ["image_uri", "boxes"]):
            for box in row["boxes"] or []:
                labels[box["label"].lower()] = box["class_id"]
    wanted: set[int] = set()
    for name in classes:
        if name.strip().isdigit():
            wanted.add(int(name))
        elif name.strip().lower() in labels:
            wanted.add(labels[name.strip().lower()])
        else:
            logger.warning("class %r is in no box of these results", name)
    return wanted


def _kept_boxes(row: dict[str, Any], min_score: float | None, wanted: set[int] | None) -> list[dict[str, Any]]:
    return [
        box
        for box in row["boxes"] or []
        if (min_score is None or box["score"] >= min_score) and (wanted is None or box["class_id"] in wanted)
    ]


def _segment(mask: np.ndarray, box: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
    """The mask inside the box's pixels as COCO RLE (counts as a string), and its area; None when empty."""
    from pycocotools import mask as coco_mask

    height, width = mask.shape
    x0, y0 = max(0, int(np.floor(box["x0"]))), max(0, int(np.floor(box["y0"])))
    x1, y1 = min(width, int(np.ceil(box["x1"]))), min(height, int(np.ceil(box["y1"])))
    inside = np.zeros_like(mask)
    inside[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    area = int(inside.sum())
    if area == 0:
        return None
    rle = coco_mask.encode(np.asfortranarray(inside.astype(np.uint8)))
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}, area


def _class_masks(row: dict[str, Any], boxes: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """The pixels of each class of `boxes` that has a mask: its label-map mask (`masks`), or for a row written
    without label maps, the first kept class's `mask`; decoded only for the classes boxed."""
    boxed = {box["class_id"] for box in boxes}
    if row.get("masks") is not None:
        return {entry["class_id"]: decode_mask(entry) for entry in row["masks"] if entry["class_id"] in boxed}
    mask = row.get("mask")
    return {mask["class_id"]: decode_mask(mask)} if mask and mask["class_id"] in boxed else {}


def _annotations(row: dict[str, Any], image_id: int, boxes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The row's kept boxes as COCO annotations, without their `id`."""
    masks = _class_masks(row, boxes)
    for box in boxes:
        width, height = float(box["x1"]) - float(box["x0"]), float(box["y1"]) - float(box["y0"])
        annotation: dict[str, Any] = {
            "image_id": image_id,
            "category_id": box["class_id"],
            "bbox": [float(box["x0"]), float(box["y0"]), width, height],
            "area": width * height,
            "iscrowd": 0,
            "score": float(box["score"]),
        }
        if box["class_id"] in masks:
            segment = _segment(masks[box["class_id"]], box)
            if segment is not None:
                annotation["segmentation"], annotation["area"] = segment
        yield annotation


def _write_coco_stream(
    output: Output,
    out: TextIO,
    run_id: str | None = None,
    min_score: float | None = None,
    classes: Sequence[str] | None = None,
) -> tuple[int, int]:
    """Writes the COCO document to `out` piece by piece; returns (images, annotations).

    The images go straight to `out`; the annotations, produced in the same pass, wait in a temporary file
    and follow the categories, which are only known once every row has been read."""
    wanted = _class_filter(output, run_id, classes)
    categories: dict[int, tuple[str, str]] = {}
    info = {"description": f"camray boxes from {output.uri}", "run_id": run_id}
    out.write('{"info": ' + json.dumps(info) + ', "images": [')
    image_count = annotation_count = 0
    with tempfile.TemporaryFile("w+", encoding="utf-8") as pending:
        for image_id, row in enumerate(_rows(output, run_id), start=1):
            image = {"id": image_id, "file_name": row["image_uri"], "width": row["width"], "height": row["height"]}
            out.write((", " if image_count else "") + json.dumps(image))
            image_count += 1
            boxes = _kept_boxes(row, min_score, wanted)
            for box in boxes:
                categories.setdefault(box["class_id"], (box["label"], row["model"]))
            for annotation in _annotations(row, image_id, boxes):
                annotation_count += 1
                pending.write(
                    (", " if annotation_count > 1 else "") + json.dumps({"id": annotation_count, **annotation})
                )
        out.write('], "categories": ')
        out.write(
            json.dumps(
                [
                    {"id": class_id, "name": name, "supercategory": model}
                    for class_id, (name, model) in sorted(categories.items())
                ]
            )
        )
        out.write(', "annotations": [')
        pending.seek(0)
        shutil.copyfileobj(pending, out)
        out.write("]}")
    return image_count, annotation_count


def coco(
    output: Output,
    run_id: str | None = None,
    min_score: float | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The COCO instances dataset (see the module docstring) as a dict, for small outputs; `write_coco` streams."""
    text = io.StringIO()
    _write_coco_stream(output, text, run_id=run_id, min_score=min_score, classes=classes)
    return json.loads(text.getvalue())


def write_coco(output: Output, dest: str | Path, **options: Any) -> Path:
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        images, annotations = _write_coco_stream(output, out, **options)
    logger.info("%d images, %d annotations written to %s", images, annotations, path)
    return path


def _uri_path(row: dict[str, Any]) -> str:
    """Where the image's files go, laid out like the inputs: its own path, or for a sample of a shard or table,
    the container's path without its suffix, then the sample's key (`shards/shard-000/000123`)."""
    if row.get("container_uri"):
        return layout_path(row["image_uri"], row["container_uri"])
    return row["image_uri"].removeprefix("s3://").removeprefix("file://")


def export_path(row: dict[str, Any], common: str, suffix: str) -> str:
    """The image's path under the images' common folder, with `suffix` for its own (after a sample's key)."""
    path = _uri_path(row)
    relative = posixpath.relpath(path, common) if common else path.lstrip("/")
    return (relative if row.get("container_uri") else posixpath.splitext(relative)[0]) + suffix


def common_folder(folder: str | None, row: dict[str, Any]) -> str:
    """`folder` (None before the first row) narrowed to hold `row`'s image too."""
    own = posixpath.dirname(_uri_path(row))
    return own if folder is None else posixpath.commonpath([folder, own])


def write_yolo(
    output: Output,
    dest: str | Path,
    run_id: str | None = None,
    min_score: float | None = None,
    classes: Sequence[str] | None = None,
) -> Path:
    """Writes the YOLO labels (see the module docstring) under `dest`; returns `dest`.

    Two streamed passes: the first finds the common folder and the classes that occur (both needed before the
    first label line), the second writes the files."""
    wanted = _class_filter(output, run_id, classes)
    labels: dict[int, str] = {}
    common: str | None = None
    for row in _rows(output, run_id, ["image_uri", "container_uri", "boxes"]):
        common = common_folder(common, row)
        for box in _kept_boxes(row, min_score, wanted):
            labels[box["class_id"]] = box["label"]
    index = {class_id: position for position, class_id in enumerate(sorted(labels))}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # The labels are written to a fresh folder that replaces `labels/` at the end: a file that already exists
    # there is then another image's of this export (a clash), found without remembering every name written.
    partial = Path(tempfile.mkdtemp(prefix=".labels-", dir=dest))
    written = 0
    try:
        with (dest / "images.txt").open("w", encoding="utf-8") as images:
            for row in _rows(output, run_id, ["image_uri", "container_uri", "width", "height", "boxes"]):
                name = export_path(row, common or "", ".txt")
                lines = []
                for box in _kept_boxes(row, min_score, wanted):
                    cx = (box["x0"] + box["x1"]) / 2 / row["width"]
                    cy = (box["y0"] + box["y1"]) / 2 / row["height"]
                    w = (box["x1"] - box["x0"]) / row["width"]
                    h = (box["y1"] - box["y0"]) / row["height"]
                    lines.append(f"{index[box['class_id']]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
                path = partial / name
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with path.open("x", encoding="utf-8") as label:
                        label.write("".join(lines))
                except FileExistsError:
                    raise UsageError(
                        f"{row['image_uri']} would share the label file {name} with an image listed before it in "
                        f"{dest / 'images.txt'}; export them separately"
                    ) from None
                images.write(f"{row['image_uri']}\n")
                written += 1
        shutil.rmtree(dest / "labels", ignore_errors=True)
        partial.rename(dest / "labels")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    (dest / "classes.txt").write_text("".join(f"{labels[class_id]}\n" for class_id in sorted(labels)))
    logger.info("%d label files, %d classes written to %s", written, len(labels), dest)
    return dest
