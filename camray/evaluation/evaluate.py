"""Localization evaluation of camray results against ground truth boxes (and masks).

`python -m camray.evaluation.evaluate --results URI --truth FILE [--box-of top1|given] [--cam-curve-interval 0.01]
[--json OUT]`

Truth: COCO JSON (`images`, `annotations` with `bbox` [x, y, w, h], optional `segmentation`) or a CSV with
`file,x0,y0,x1,y1[,class_id][,kind]` (several rows per file for several objects; `class_id` may list several
acceptable ids separated by spaces; `kind` names what the object is, for image-level labels). Of the output's
results, the newest row of each image across succeeded runs is evaluated (the rule of `camray export`), matched to
truth by file name.

Measures (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization Methods Right", with the
definitions of clovaai/wsolevaluation: maps and boxes resized to 224 x 224, uint8 maps thresholded with
OpenCV, boxes of contours, inclusive-pixel IoU):
- `maxboxacc`: GT-known box accuracy at IoU 0.5, largest contour, best map threshold;
- `maxboxacc_v2`: mean over IoU 0.3/0.5/0.7 of the same with every contour's box (best one counts);
- `box_acc`: the job's own first box of the top-1 class (`--box-of given`: of the image's given labels, for a
  job with `cam.classes: given`), at the configured threshold, IoU >= 0.5 against any truth box (pixel-edge IoU
  in original pixels): what users of the Parquet get; also per object size
  (`box_acc_by_size`: the largest truth box under 10%, 10-30%, over 30% of the image area);
- `top1_loc`: `box_acc` and the top-1 class is acceptable; `gt_known_loc`: `maxboxacc`'s counterpart at the
  configured threshold using the truth class's map;
- `pxap`: pixel average precision of the maps against truth masks, where the truth has masks;
- `object_recall`: the share of truth objects that some job box matches at IoU >= 0.5, a box of one of the
  object's classes where it has any, of any class where it has none (class-agnostic); also per the object's
  own size (`object_recall_by_size`); `box_precision`: the share of the job's boxes that match a truth object
  at IoU >= 0.5 (false boxes lower it).
GT-known measures use the map of the first acceptable class among the stored top-k maps; images whose
classes are all outside the top-k fall back to the top-1 map (`fallbacks` counts them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from camray.io.output import Output
from camray.io.schema import decode_heatmap

RESIZE = 224
IOU_V2 = (0.3, 0.5, 0.7)
# Whose first box `box_acc` scores: the top-1 class's, or, for a job given image-level labels (`cam.classes`
# `given`), the image's first box of one of its given classes (rows order an image's boxes best score first).
BoxOf = Literal["top1", "given"]
# Object size buckets by the largest truth box's share of the image area (COCO's small/medium/large, but
# relative: a CAM's resolution is a fraction of the image, whatever its pixel count).
SIZE_BUCKETS = (("small", 0.0, 0.1), ("medium", 0.1, 0.3), ("large", 0.3, 1.01))


@dataclass
class Truth:
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # pixel-edge, original pixels
    classes: set[int] = field(default_factory=set)
    box_classes: list[set[int]] = field(default_factory=list)  # each box's acceptable classes; empty: any
    mask: np.ndarray | None = None  # bool [height, width]
    box_kinds: list[str] = field(default_factory=list)  # each box's kind (its image-level label), where known


def load_truth(path: str | Path) -> dict[str, Truth]:
    path = Path(path)
    truth: dict[str, Truth] = defaultdict(Truth)
    if path.suffix.lower() == ".json":
        coco = json.loads(path.read_text())
        images = {image["id"]: image for image in coco["images"]}
        for ann in coco["annotations"]:
            image = images[ann["image_id"]]
            entry = truth[Path(image["file_name"]).name]
            x, y, w, h = ann["bbox"]
            entry.boxes.append((x, y, x + w, y + h))
            entry.box_classes.append({int(ann["category_id"])} if "category_id" in ann else set())
            if "category_id" in ann:
                entry.classes.add(int(ann["category_id"]))
            if ann.get("segmentation"):
                mask = _coco_mask(ann["segmentation"], image["height"], image["width"])
                entry.mask = mask if entry.mask is None else entry.mask | mask
        return dict(truth)
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            entry = truth[Path(row["file"]).name]
            entry.boxes.append(tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1")))
            entry.box_classes.append({int(c) for c in (row.get("class_id") or "").split()})
            entry.classes.update(entry.box_classes[-1])
            if row.get("kind"):
                entry.box_kinds.append(row["kind"])
    return dict(truth)


def _coco_mask(segmentation: object, height: int, width: int) -> np.ndarray:
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return coco_mask.decode(rle).astype(bool)


def resize_box(box: tuple[float, ...], image_size: tuple[int, int], size: int = RESIZE) -> tuple[int, ...]:
    """A box in original pixels -> the 224 x 224 frame, truncated to ints (wsolevaluation's `resize_bbox`)."""
    width, height = image_size
    x0, y0, x1, y1 = box
    return int(x0 * size / width), int(y0 * size / height), int(x1 * size / width), int(y1 * size / height)


def edge_ious(boxes_a: Sequence | np.ndarray, boxes_b: Sequence | np.ndarray) -> np.ndarray:
    """IoU of every pair of pixel-edge boxes (the job's convention: a box covers `[x0, x1) x [y0, y1)`),
    float64[A, B]; torchvision's `box_iou`, with 0 where both boxes are empty."""
    a = torch.as_tensor(np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4))
    return box_iou(a, b).nan_to_num(0.0).numpy()


def multiple_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair, inclusive-pixel convention (areas count x1 - x0 + 1), as in wsolevaluation: the boxes'
    far edges moved out by one pixel, then as pixel-edge boxes."""
    grow = np.array([0, 0, 1, 1], dtype=np.float64)
    return edge_ious(np.asarray(boxes_a, dtype=np.float64) + grow, np.asarray(boxes_b, dtype=np.float64) + grow)


def boxes_from_scoremap(scoremap: np.ndarray, threshold: float, multi_contour: bool) -> np.ndarray:
    """Boxes of the contours of `scoremap (float[H, W] in [0, 1]) > threshold * max` (wsolevaluation)."""
    height, width = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    _, binary = cv2.threshold(image, int(threshold * image.max()), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64)
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return np.asarray(boxes, dtype=np.int64)


def pixel_ap(scores: list[np.ndarray], masks: list[np.ndarray], thresholds: np.ndarray) -> float:
    """PxAP: area under the pixel precision-recall curve over map thresholds (wsolevaluation's histograms)."""
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(edges) - 1)
    false_hist = np.zeros(len(edges) - 1)
    for score, mask in zip(scores, masks, strict=True):
        true_hist += np.histogram(score[mask], bins=edges)[0]
        false_hist += np.histogram(score[~mask], bins=edges)[0]
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    nonzero = (tp + fp) != 0
    precision = np.where(nonzero, tp / np.where(nonzero, tp + fp, 1), 0)
    recall = tp / max(tp[-1] + fn[-1], 1)
    return float((precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100)


def edge_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two pixel-edge boxes in original pixels (the job's convention)."""
    return float(edge_ious([a], [b])[0, 0])


@dataclass(frozen=True)
class Report:
    images: int
    missing: int
    fallbacks: int
    box_acc: float
    top1_cls: float
    top1_loc: float
    maxboxacc: float
    maxboxacc_v2: float
    maxboxacc_by_iou: dict[str, float]
    best_threshold: float
    pxap: float | None
    box_acc_by_size: dict[str, dict[str, float]] = field(default_factory=dict)  # bucket -> accuracy, images
    objects: int = 0
    object_recall: float = 0.0
    object_recall_by_size: dict[str, dict[str, float]] = field(default_factory=dict)  # bucket -> recall, objects
    box_precision: float = 0.0

    def table(self) -> str:
        rows = [
            ("images evaluated", f"{self.images} ({self.missing} in truth without results)"),
            ("box accuracy @IoU0.5 (configured threshold)", f"{self.box_acc:.3f}"),
            *(
                (
                    f"  {bucket} objects ({low:.0%}-{min(high, 1):.0%} of the image)",
                    _bucket(self.box_acc_by_size, bucket),
                )
                for bucket, low, high in SIZE_BUCKETS
            ),
            ("object recall @IoU0.5 (any top-k box)", f"{self.object_recall:.3f} of {self.objects} objects"),
            *(
                (f"  {bucket} objects", _bucket(self.object_recall_by_size, bucket, "recall", "objects"))
                for bucket, _, _ in SIZE_BUCKETS
            ),
            ("box precision @IoU0.5", f"{self.box_precision:.3f}"),
            ("top-1 classification", f"{self.top1_cls:.3f}"),
            ("top-1 localization", f"{self.top1_loc:.3f}"),
            ("MaxBoxAcc (GT-known, IoU 0.5)", f"{self.maxboxacc:.3f} at map threshold {self.best_threshold:.2f}"),
            ("MaxBoxAccV2 (IoU 0.3/0.5/0.7)", f"{self.maxboxacc_v2:.3f} {self.maxboxacc_by_iou}"),
            ("PxAP", "n/a (no masks)" if self.pxap is None else f"{self.pxap:.2f}"),
            ("GT-known fallbacks to top-1 map", str(self.fallbacks)),
        ]
        return "\n".join(f"{name:<46} {value}" for name, value in rows)


def _bucket(by_size: dict[str, dict[str, float]], bucket: str, measure: str = "box_acc", unit: str = "images") -> str:
    entry = by_size.get(bucket)
    return f"{entry[measure]:.3f} of {int(entry[unit])} {unit}" if entry else f"no {unit}"


def _area(box: tuple[float, ...]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _corners(box: dict) -> tuple[float, float, float, float]:
    return box["x0"], box["y0"], box["x1"], box["y1"]


def size_bucket(box: tuple[float, ...], width: int, height: int) -> str:
    fraction = _area(box) / (width * height)
    return next(name for name, low, high in SIZE_BUCKETS if low <= fraction < high)


def output_of(results_uri: str) -> str:
    """The output that a `results/` folder belongs to; any other URI is taken to be the output itself."""
    path = results_uri.rstrip("/")
    if posixpath.basename(path) != "results":
        return path
    return posixpath.dirname(path) or "."


def _latest_rows(results_uri: str) -> dict[str, dict]:
    """The newest row of each image across succeeded runs (`Output.latest_results`, the exports' rule), keyed by
    file name as the truth is; of two inputs with one file name, the later URI in sort order."""
    output = Output(output_of(results_uri))
    output.check_exists()
    columns = ["image_uri", "width", "height", "labels", "predictions", "cams", "boxes", "run_id"]
    return {row["image_uri"].rsplit("/", 1)[-1]: row for row in output.latest_results(None, columns).to_pylist()}


def evaluate_rows(
    rows: dict[str, dict], truth: dict[str, Truth], interval: float = 0.01, box_of: BoxOf = "top1"
) -> Report:
    """Computes the report from result rows (as `to_pylist` gives them) keyed by file name. `box_of` says whose
    first box `box_acc` scores (`BoxOf`)."""
    thresholds = np.arange(0, 1, interval)
    correct_single = np.zeros(len(thresholds))
    correct_multi = {iou: np.zeros(len(thresholds)) for iou in IOU_V2}
    box_hits = cls_hits = loc_hits = fallbacks = 0
    px_scores: list[np.ndarray] = []
    px_masks: list[np.ndarray] = []
    evaluated = 0
    bucket_hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    object_hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    boxes_out = boxes_matched = 0
    for name, gt in truth.items():
        row = rows.get(name)
        if row is None:
            continue
        evaluated += 1
        size = (row["width"], row["height"])
        top1 = row["predictions"][0]["class_id"]
        cams = {cam["class_id"]: cam for cam in row["cams"]}
        chosen = next((cams[c] for c in cams if c in gt.classes), None)
        if chosen is None:
            fallbacks += 1
            chosen = row["cams"][0] if row["cams"] else None
        # A sigmoid head may keep no class of an image: no map, so no threshold boxes its object.
        scoremap = np.zeros((RESIZE, RESIZE), dtype=np.float32)
        if chosen is not None:
            heat = decode_heatmap(chosen)
            scoremap = cv2.resize(heat, (RESIZE, RESIZE), interpolation=cv2.INTER_LINEAR)
            low, high = scoremap.min(), scoremap.max()
            scoremap = (scoremap - low) / (high - low) if high > low else np.zeros_like(scoremap)
        gt_boxes = np.asarray([resize_box(box, size) for box in gt.boxes])
        for index, threshold in enumerate(thresholds):
            single = boxes_from_scoremap(scoremap, threshold, multi_contour=False)
            correct_single[index] += multiple_iou(single, gt_boxes).max() >= 0.5
            best = multiple_iou(boxes_from_scoremap(scoremap, threshold, multi_contour=True), gt_boxes).max()
            for iou in IOU_V2:
                correct_multi[iou][index] += best >= iou
        boxed = {top1} if box_of == "top1" else {label["class_id"] for label in row.get("labels") or ()}
        own = [b for b in row["boxes"] if b["class_id"] in boxed]
        hit = bool(own) and bool(edge_ious([_corners(own[0])], gt.boxes).max() >= 0.5)
        box_hits += hit
        largest = max(gt.boxes, key=_area)
        tally = bucket_hits[size_bucket(largest, *size)]
        tally[0] += hit
        tally[1] += 1
        job_classes = [b["class_id"] for b in row["boxes"]]
        matches = edge_ious([_corners(b) for b in row["boxes"]], gt.boxes) >= 0.5  # [job box, truth box]
        box_classes = gt.box_classes or [gt.classes] * len(gt.boxes)
        for index, (truth_box, classes) in enumerate(zip(gt.boxes, box_classes, strict=True)):
            found = any(matches[j, index] for j, c in enumerate(job_classes) if not classes or c in classes)
            tally = object_hits[size_bucket(truth_box, *size)]
            tally[0] += found
            tally[1] += 1
        boxes_out += len(job_classes)
        boxes_matched += int(matches.any(axis=1).sum())
        cls_ok = not gt.classes or top1 in gt.classes
        cls_hits += cls_ok
        loc_hits += hit and cls_ok
        if gt.mask is not None:
            px_scores.append(cv2.resize(heat, (size[0], size[1]), interpolation=cv2.INTER_LINEAR))
            px_masks.append(gt.mask)
    n = max(evaluated, 1)
    by_iou = {f"{iou:.1f}": float(correct_multi[iou].max() / n) for iou in IOU_V2}
    return Report(
        images=evaluated,
        missing=len(truth) - evaluated,
        fallbacks=fallbacks,
        box_acc=box_hits / n,
        top1_cls=cls_hits / n,
        top1_loc=loc_hits / n,
        maxboxacc=float(correct_single.max() / n),
        maxboxacc_v2=float(np.mean(list(by_iou.values()))),
        maxboxacc_by_iou=by_iou,
        best_threshold=float(thresholds[int(correct_single.argmax())]),
        pxap=pixel_ap(px_scores, px_masks, thresholds) if px_masks else None,
        box_acc_by_size={
            name: {"box_acc": hits / count, "images": count} for name, (hits, count) in sorted(bucket_hits.items())
        },
        objects=sum(count for _, count in object_hits.values()),
        object_recall=sum(hits for hits, _ in object_hits.values()) / max(sum(c for _, c in object_hits.values()), 1),
        object_recall_by_size={
            name: {"recall": hits / count, "objects": count} for name, (hits, count) in sorted(object_hits.items())
        },
        box_precision=boxes_matched / max(boxes_out, 1),
    )


def evaluate(results_uri: str, truth_path: str | Path, interval: float = 0.01, box_of: BoxOf = "top1") -> Report:
    return evaluate_rows(_latest_rows(results_uri), load_truth(truth_path), interval, box_of)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--results", required=True, help="a job's output, or its `results/` folder (a folder or s3:// prefix)"
    )
    parser.add_argument("--truth", required=True, help="COCO JSON or CSV of boxes")
    parser.add_argument(
        "--box-of", choices=["top1", "given"], default="top1", help="whose first box box accuracy scores"
    )
    parser.add_argument("--cam-curve-interval", type=float, default=0.01)
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if not math.isfinite(args.cam_curve_interval) or not 0 < args.cam_curve_interval < 1:
        parser.error("--cam-curve-interval must be in (0, 1)")
    report = evaluate(args.results, args.truth, args.cam_curve_interval, args.box_of)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
