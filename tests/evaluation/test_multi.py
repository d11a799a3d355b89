"""The multi-object set is deterministic, and its measures agree with slow, obvious loops on hand-made boxes."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from camray.evaluation import scenes
from camray.evaluation.evaluate import Truth, load_truth
from camray.evaluation.multi import Detection, coco_ap50, evaluate_detections, match


def _scene_files(folder) -> dict[str, np.ndarray]:
    return {path.name: np.asarray(Image.open(path)) for path in sorted((folder / "images").glob("scene_*.png"))}


def test_scenes_are_deterministic_and_hold_two_or_three_objects_apart(tmp_path) -> None:
    first = scenes.build(tmp_path / "a", seed=7, per_texture=2)
    second = scenes.build(tmp_path / "b", seed=7, per_texture=2)
    other = scenes.build(tmp_path / "c", seed=8, per_texture=2)
    assert first.read_text() == second.read_text()
    a, b = _scene_files(tmp_path / "a"), _scene_files(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)
    assert first.read_text() != other.read_text()

    by_file: dict[str, list[dict[str, str]]] = defaultdict(list)
    with first.open(newline="") as handle:
        for row in csv.DictReader(handle):
            by_file[row["file"]].append(row)
    scene_names = [name for name in by_file if name.startswith("scene_")]
    assert len(scene_names) == len(scenes.TEXTURES) * 2 == len(a)
    for name in scene_names:
        rows = by_file[name]
        assert 2 <= len(rows) <= 3
        assert len({row["class_id"] for row in rows}) == len(rows)  # different objects
        height, width = a[name].shape[:2]
        boxes = [tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1")) for row in rows]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        for i, p in enumerate(boxes):
            for q in boxes[i + 1 :]:
                assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1], (name, p, q)
    assert len(by_file["photo_voc.png"]) == 19 and len(by_file["photo_arc2017.png"]) == 8
    truth = load_truth(first)  # the evaluation set's reader: one set of acceptable classes per scene object
    assert all(all(truth[name].box_classes) and len(truth[name].box_classes) == len(by_file[name]) for name in a)


def _iou(a, b) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter_w * inter_h
    return inter_w * inter_h / union


def _reference(detections, truth, min_score):
    """Object by object, box by box, as the definitions read."""
    found = objects = boxes = right = 0
    for name, gt in truth.items():
        kept = [d for d in detections[name] if d.score >= min_score]
        for box, classes in zip(gt.boxes, gt.box_classes, strict=True):
            objects += 1
            hit = False
            for det in kept:
                if (not classes or det.class_id in classes) and _iou(det.box, box) >= 0.5:
                    hit = True
            found += hit
        for det in kept:
            boxes += 1
            good = False
            for box, classes in zip(gt.boxes, gt.box_classes, strict=True):
                if (not classes or det.class_id in classes) and _iou(det.box, box) >= 0.5:
                    good = True
            right += good
    return found / objects, right / boxes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_score", [0.0, 0.5])
def test_recall_and_precision_match_the_slow_reference(seed: int, min_score: float) -> None:
    rng = np.random.default_rng(seed)
    truth: dict[str, Truth] = {}
    detections: dict[str, list[Detection]] = {}
    for image in range(6):
        gt = Truth()
        for _ in range(int(rng.integers(1, 4))):
            x0, y0 = rng.uniform(0, 200, 2)
            gt.boxes.append((x0, y0, x0 + rng.uniform(10, 120), y0 + rng.uniform(10, 120)))
            gt.box_classes.append(set() if rng.random() < 0.2 else {int(rng.integers(0, 3)), 10})
        dets = []
        for box in gt.boxes:  # near copies of the truth, some shifted past IoU 0.5, some of a wrong class
            shift = rng.uniform(-0.4, 0.4) * (box[2] - box[0])
            moved = (box[0] + shift, box[1], box[2] + shift, box[3])
            dets.append(Detection(moved, int(rng.integers(0, 4)), float(rng.random())))
        dets += [Detection((5.0, 5.0, 30.0, 40.0), 1, float(rng.random())) for _ in range(int(rng.integers(0, 2)))]
        truth[f"{image}.png"] = gt
        detections[f"{image}.png"] = dets
    report = match(detections, truth, min_score)
    recall, precision = _reference(detections, truth, min_score)
    assert report.object_recall == pytest.approx(recall)
    assert report.box_precision == pytest.approx(precision)
    assert 0 < report.boxes and report.objects == sum(len(gt.boxes) for gt in truth.values())


def test_ap50_by_hand() -> None:
    """One kind, two objects; boxes ranked hit (0.9), false (0.8), hit (0.7): precision 1 up to recall 0.5, then
    2/3. COCO samples precision at 101 recalls, each the best precision at that recall or beyond:
    (51 * 1 + 50 * 2/3) / 101. A box of a class no object has changes nothing per kind, but counts class-agnostic."""
    truth = {"a.png": Truth(boxes=[(0, 0, 100, 100), (200, 0, 300, 100)], box_classes=[{281, 282}, {281, 282}])}
    detections = {
        "a.png": [
            Detection((0, 0, 100, 100), 281, 0.9),
            Detection((400, 400, 500, 500), 282, 0.8),
            Detection((200, 0, 300, 100), 282, 0.7),
        ]
    }
    expected = (51 + 50 * 2 / 3) / 101
    ap50, by_size = coco_ap50(detections, truth)
    assert ap50 == pytest.approx(expected)
    assert by_size["large"] == pytest.approx(expected) and by_size["small"] is None
    stray = {"a.png": [*detections["a.png"], Detection((0, 0, 100, 100), 999, 0.95)]}
    assert coco_ap50(stray, truth)[0] == pytest.approx(expected)
    agnostic, _ = coco_ap50(stray, truth, agnostic=True)
    assert agnostic < expected
    report = evaluate_detections(detections, truth)
    assert (report.object_recall, report.box_precision) == (1.0, pytest.approx(2 / 3))
    assert report.ap50 == pytest.approx(expected)
