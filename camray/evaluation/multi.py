"""Multi-object evaluation: are the boxes a pseudo-label set a detector can learn from?

`python -m camray.evaluation.multi --coco EXPORT.json --truth data/scenes/truth.csv [--min-score S] [--labels FILE]
[--json OUT]` scores a job's own COCO export (`camray export coco`) against truth in the evaluation set's CSV format
(`camray.evaluation.scenes` builds the multi-object set). Images are matched by file name. With `--labels` (the
labels file of a head trained on the truth's kinds, `camray.evaluation.kinds_head`) every object is scored as its
kind's class of that head, people and products included.

Measures, every box in pixel-edge original pixels, a match at IoU >= 0.5:
- `object_recall`: the share of truth objects that some box of an accepted class covers (any class where the
  object has none: people and the ARC products are scored class-agnostically, as in the single-object evaluation);
  also per object size, as COCO defines it (area under 32^2 pixels small, under 96^2 medium, else large);
- `box_precision`: the share of boxes that cover a truth object of their class;
- `ap50`: COCO AP at IoU 0.5 computed by `pycocotools`, over the object kinds that have ImageNet classes (a kind is
  the set of classes one truth object accepts: any cat breed is a cat); a box counts for the kind its class belongs
  to, so two boxes of one cat (tabby and tiger cat) are one hit and one false box. Also per COCO size.
- `ap50_agnostic`: the same with every object and every box in one kind, so that a box of a class no object has
  counts against it (per-kind AP cannot see such boxes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camray.evaluation.evaluate import Truth, edge_iou, load_truth

IOU = 0.5
# COCO's object sizes, by the truth box's area in pixels.
COCO_SIZES = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # pixel-edge (x0, y0, x1, y1), original pixels
    class_id: int
    score: float


@dataclass(frozen=True)
class MultiReport:
    images: int
    objects: int
    boxes: int
    object_recall: float
    box_precision: float
    object_recall_by_size: dict[str, dict[str, float]] = field(default_factory=dict)  # size -> recall, objects
    ap50: float | None = None
    ap50_by_size: dict[str, float | None] = field(default_factory=dict)
    ap50_agnostic: float | None = None

    def table(self) -> str:
        def size_line(name: str) -> str:
            entry = self.object_recall_by_size.get(name)
            recall = f"{entry['recall']:.3f} of {int(entry['objects'])}" if entry else "no objects"
            ap = self.ap50_by_size.get(name)
            return f"recall {recall}, AP50 {'n/a' if ap is None else f'{ap:.3f}'}"

        rows = [
            ("images, objects, boxes", f"{self.images}, {self.objects}, {self.boxes}"),
            ("object recall @IoU0.5", f"{self.object_recall:.3f}"),
            ("box precision @IoU0.5", f"{self.box_precision:.3f}"),
            ("AP50 (per object kind)", _number(self.ap50)),
            ("AP50 (class-agnostic)", _number(self.ap50_agnostic)),
            *((f"  {name} objects (COCO)", size_line(name)) for name, _, _ in COCO_SIZES),
        ]
        return "\n".join(f"{name:<32} {value}" for name, value in rows)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def coco_size(box: tuple[float, ...]) -> str:
    area = (box[2] - box[0]) * (box[3] - box[1])
    return next(name for name, low, high in COCO_SIZES if low <= area < high)


def _accepts(classes: set[int], class_id: int) -> bool:
    return not classes or class_id in classes


def _box_classes(gt: Truth) -> list[set[int]]:
    return gt.box_classes or [gt.classes] * len(gt.boxes)


def match(detections: dict[str, list[Detection]], truth: dict[str, Truth], min_score: float = 0.0) -> MultiReport:
    """Object recall and box precision of `detections` (keyed by file name) with score >= `min_score`, over the
    images of `truth` that have detections listed (an image listed with none counts its objects as missed)."""
    found: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    boxes = correct = images = 0
    for name, gt in truth.items():
        if name not in detections:
            continue
        images += 1
        kept = [d for d in detections[name] if d.score >= min_score]
        classes = _box_classes(gt)
        iou = np.array([[edge_iou(d.box, t) for t in gt.boxes] for d in kept]).reshape(len(kept), len(gt.boxes))
        fits = np.array([[_accepts(c, d.class_id) for c in classes] for d in kept], dtype=bool).reshape(iou.shape)
        hits = (iou >= IOU) & fits
        for index, box in enumerate(gt.boxes):
            tally = found[coco_size(box)]
            tally[0] += bool(hits[:, index].any())
            tally[1] += 1
        boxes += len(kept)
        correct += int(hits.any(axis=1).sum())
    objects = sum(count for _, count in found.values())
    return MultiReport(
        images=images,
        objects=objects,
        boxes=boxes,
        object_recall=sum(hits for hits, _ in found.values()) / max(objects, 1),
        box_precision=correct / max(boxes, 1),
        object_recall_by_size={
            name: {"recall": found[name][0] / found[name][1], "objects": found[name][1]}
            for name, _, _ in COCO_SIZES
            if found[name][1]
        },
    )


def detections_from_coco(dataset: dict[str, Any]) -> dict[str, list[Detection]]:
    """A COCO instances export (`camray.outputs.export.coco`) -> detections keyed by file name; every image of
    the export is listed, with or without boxes."""
    names = {image["id"]: image["file_name"].rsplit("/", 1)[-1] for image in dataset["images"]}
    out: dict[str, list[Detection]] = {name: [] for name in names.values()}
    for ann in dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        out[names[ann["image_id"]]].append(Detection((x, y, x + w, y + h), int(ann["category_id"]), ann["score"]))
    return out


def detections_from_rows(rows: dict[str, dict]) -> dict[str, list[Detection]]:
    """Result rows (as `to_pylist` gives them) keyed by file name -> their boxes as detections."""
    return {
        name: [Detection((b["x0"], b["y0"], b["x1"], b["y1"]), b["class_id"], b["score"]) for b in row["boxes"] or []]
        for name, row in rows.items()
    }


def _kinds(truth: dict[str, Truth]) -> list[tuple[int, ...]]:
    """The object kinds: each distinct set of acceptable classes, in a stable order."""
    return sorted({tuple(sorted(classes)) for gt in truth.values() for classes in _box_classes(gt) if classes})


def coco_ap50(
    detections: dict[str, list[Detection]], truth: dict[str, Truth], agnostic: bool = False, min_score: float = 0.0
) -> tuple[float | None, dict[str, float | None]]:
    """AP at IoU 0.5 by `pycocotools`, overall and per COCO size (None where no object or kind is there).

    Per kind (see the module docstring) unless `agnostic`; objects without classes are left out of the per-kind
    AP, and a box whose class belongs to no kind counts for none."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    kinds = _kinds(truth)
    kind_of = {class_id: index + 1 for index, kind in enumerate(kinds) for class_id in kind}
    names = [name for name in sorted(truth) if name in detections]
    images, annotations, results = [], [], []
    for image_id, name in enumerate(names, start=1):
        gt = truth[name]
        images.append({"id": image_id, "file_name": name})  # bbox evaluation needs no image size
        for box, classes in zip(gt.boxes, _box_classes(gt), strict=True):
            if not agnostic and not classes:
                continue
            category = 1 if agnostic else kind_of[next(iter(classes))]
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for det in detections[name]:
            category = 1 if agnostic else kind_of.get(det.class_id)
            if det.score < min_score or category is None:
                continue
            x0, y0, x1, y1 = det.box
            results.append(
                {"image_id": image_id, "category_id": category, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": det.score}
            )
    categories = [{"id": i + 1, "name": str(kind)} for i, kind in enumerate(kinds)]
    if agnostic:
        categories = [{"id": 1, "name": "object"}]
    if not annotations:
        return None, {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations, "categories": categories}
        ground.createIndex()
        if not results:
            return 0.0, {name: 0.0 for name, _, _ in COCO_SIZES}
        evaluation = COCOeval(ground, ground.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"]  # [IoU, recall, kind, area, max detections]
    at50 = int(np.argmin(np.abs(evaluation.params.iouThrs - IOU)))

    def mean(area: int) -> float | None:
        values = precision[at50, :, :, area, -1]
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    labels = evaluation.params.areaRngLbl  # all, small, medium, large
    return mean(0), {label: mean(index) for index, label in enumerate(labels) if label != "all"}


def evaluate_detections(
    detections: dict[str, list[Detection]], truth: dict[str, Truth], min_score: float = 0.0
) -> MultiReport:
    """Recall, precision and both AP50s of `detections` against `truth`."""
    report = match(detections, truth, min_score)
    ap50, by_size = coco_ap50(detections, truth, min_score=min_score)
    agnostic, _ = coco_ap50(detections, truth, agnostic=True, min_score=min_score)
    return MultiReport(**{**asdict(report), "ap50": ap50, "ap50_by_size": by_size, "ap50_agnostic": agnostic})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", required=True, help="the job's COCO export (`camray export coco`)")
    parser.add_argument("--truth", required=True, help="CSV of boxes (`camray.evaluation.scenes` writes one)")
    parser.add_argument("--min-score", type=float, default=0.0, help="score only boxes with score >= S")
    parser.add_argument(
        "--labels",
        help="the head's labels file (`model.labels`): score against the truth's kinds as its classes, for a head "
        "trained on them (`camray.evaluation.given_labels.truth_for_head`)",
    )
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    detections = detections_from_coco(json.loads(Path(args.coco).read_text()))
    truth = load_truth(args.truth)
    if args.labels:
        from camray.evaluation.given_labels import truth_for_head

        truth = truth_for_head(truth, Path(args.labels).read_text().split())
    report = evaluate_detections(detections, truth, args.min_score)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
