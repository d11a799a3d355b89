"""The Parquet schemas of `results/`, `errors/` and `runs/`, versioned, plus helpers for readers.

Heatmap encoding (`cams[].heatmap`): the class map normalised to [0, 1] over the image, quantised to uint8
(`round(255 * value)`), row-major, `heatmap_height` x `heatmap_width`, covering exactly the whole original
image (resize it to `height` x `width` to overlay). `decode_heatmap` turns it back into float32.

Mask encoding (`mask`, each entry of `masks`, `ignore_mask`): COCO run-length encoding at the original `height` x
`width`, `counts` as the compressed string pycocotools writes; `decode_mask` returns it as bool. `mask` is the
pseudo-mask of the image's first kept class (its map thresholded alone; kept for schema version 3 only). `masks`
is the image's label map (docs/localization.md): one entry per kept class, in the order of `cams`, its pixels those
where it wins (possibly none), so that no pixel belongs to two; a pixel in none is background, or undecided where
it is in `ignore_mask` (written with `masks.ignore_below`). `label_map` rebuilds the label map.

Classes: `predictions` are the model's top-k, best first. `cams`, `boxes` and `mask` are of the kept classes
(`cam.classes`: the predicted ones, the image's given `labels`, or both), each entry naming its `class_id`: a
kept class need not be a prediction, nor a prediction kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# 2: `runs` gained the operator's columns (attempt, message, images_per_second, errors_by_stage, io_retries,
# versions, nodes, GPU types, host, stats_uri). Results and errors are unchanged; readers of runs written by
# version 1 read the new columns as nulls (`RUNS` as the dataset schema).
# 3: `results` gained `labels` (the image's given labels, resolved), and maps and boxes follow the kept classes
# (`cam.classes`) rather than the predictions one for one; `errors` gained the stage `labels`. Readers of older
# results read `labels` as null.
# `results` and `errors` also gained `container_uri`: the WebDataset shard or Parquet table file that holds the
# image (null for an image file of its own); and `results` its label map: `masks`, one COCO RLE per kept class,
# never overlapping, and `ignore_mask`, its undecided pixels. Readers of older files read them as null. `mask`, the
# first kept class's thresholded map, stays for this version and goes in the next.
SCHEMA_VERSION = 3

PREDICTION = pa.struct([("class_id", pa.int32()), ("label", pa.string()), ("score", pa.float32())])
CAM = pa.struct(
    [
        ("class_id", pa.int32()),
        ("heatmap_height", pa.int32()),
        ("heatmap_width", pa.int32()),
        ("heatmap", pa.binary()),
    ]
)
BOX = pa.struct(
    [
        ("class_id", pa.int32()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("x0", pa.float32()),
        ("y0", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
    ]
)
MASK = pa.struct([("class_id", pa.int32()), ("size", pa.list_(pa.int32())), ("counts", pa.string())])
CLASS_MASK = pa.struct(
    [("class_id", pa.int32()), ("label", pa.string()), ("size", pa.list_(pa.int32())), ("counts", pa.string())]
)
RLE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
LABEL = pa.struct([("class_id", pa.int32()), ("label", pa.string())])

_META = {b"camray.schema_version": str(SCHEMA_VERSION).encode()}

RESULTS = pa.schema(
    [
        ("image_uri", pa.string()),
        ("source_version", pa.string()),
        ("container_uri", pa.string()),
        ("content_sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("labels", pa.list_(LABEL)),
        ("predictions", pa.list_(PREDICTION)),
        ("cams", pa.list_(CAM)),
        ("boxes", pa.list_(BOX)),
        ("mask", MASK),
        ("masks", pa.list_(CLASS_MASK)),
        ("ignore_mask", RLE),
        ("config_fingerprint", pa.string()),
        ("run_id", pa.string()),
    ],
    metadata=_META,
)

ERRORS = pa.schema(
    [
        ("image_uri", pa.string()),
        ("source_version", pa.string()),
        ("container_uri", pa.string()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("run_id", pa.string()),
    ],
    metadata=_META,
)

RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("status", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("config_fingerprint", pa.string()),
        ("config_json", pa.string()),
        ("model", pa.string()),
        ("weights_source", pa.string()),
        ("weights_sha256", pa.string()),
        ("input_uri", pa.string()),
        ("listed", pa.int64()),
        ("skipped", pa.int64()),
        ("results", pa.int64()),
        ("errors", pa.int64()),
        ("seconds", pa.float64()),
        ("schema_version", pa.int32()),
        ("attempt", pa.int32()),
        ("message", pa.string()),
        ("resumed", pa.int64()),
        ("images_per_second", pa.float64()),
        ("errors_by_stage", pa.string()),
        ("io_retries", pa.int64()),
        ("camray_version", pa.string()),
        ("git_commit", pa.string()),
        ("ray_version", pa.string()),
        ("torch_version", pa.string()),
        ("nodes", pa.int32()),
        ("gpu_types", pa.string()),
        ("host", pa.string()),
        ("stats_uri", pa.string()),
    ],
    metadata=_META,
)

# What the predictor emits: every results column plus the error columns, one row per input; the sink
# splits it into `results/` and `errors/`. `io_retries` (the S3 retries the row's read took) is the sink's
# to count, and is written to neither.
ROWS = pa.schema(
    [field for field in RESULTS]
    + [pa.field("stage", pa.string()), pa.field("error_type", pa.string()), pa.field("message", pa.string())]
    + [pa.field("io_retries", pa.int64())]
)


def decode_heatmap(cam: dict[str, Any]) -> np.ndarray:
    """`cams[i]` (as pyarrow's `to_pylist` gives it) -> float32[heatmap_height, heatmap_width] in [0, 1]."""
    raw = np.frombuffer(cam["heatmap"], dtype=np.uint8)
    return raw.reshape(cam["heatmap_height"], cam["heatmap_width"]).astype(np.float32) / 255.0


def quantize_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """float[..., h, w] in [0, 1] -> the stored uint8 values (see the module docstring)."""
    return np.round(np.clip(heatmaps, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """float[h, w] in [0, 1] -> the stored bytes (see the module docstring)."""
    return quantize_heatmaps(heatmap).tobytes()


def decode_mask(mask: dict[str, Any]) -> np.ndarray:
    """`mask`, an entry of `masks`, or `ignore_mask` (as `to_pylist` gives them) -> bool[height, width]."""
    from pycocotools import mask as coco_mask

    rle = {"size": list(mask["size"]), "counts": mask["counts"].encode()}
    return coco_mask.decode(rle).astype(bool)


def label_map(row: dict[str, Any], values: dict[int, int] | None = None) -> np.ndarray | None:
    """A results row's label map (uint8[height, width]) from its `masks` and `ignore_mask`: 0 background, 255
    undecided, and for each class its value in `values` (class id -> 1..254), or its position in `masks` plus 1
    without it; a class `values` leaves out is background. None where the row has no `masks` (written before
    label maps, or with `masks.label_maps` off)."""
    if row.get("masks") is None:
        return None
    out = np.zeros((row["height"], row["width"]), dtype=np.uint8)
    for position, entry in enumerate(row["masks"], start=1):
        value = position if values is None else values.get(entry["class_id"], 0)
        if value:
            out[decode_mask(entry)] = value
    if row.get("ignore_mask") is not None:
        out[decode_mask(row["ignore_mask"])] = 255
    return out
