"""Every `camray` tool on a real run over local storage: ten evaluation images, one broken JPEG, and one input
that vanishes after the run; then the debris of a crashed run and the runs row of a failed one, as a newer job
version writes it. Commands go through `main_camray(argv)`, the console script's function."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shlex
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from headless_chromium import render_ok, require_browser
from PIL import Image
from run_inputs import input_files

from camray.cli import main_camray
from camray.io.output import Output
from camray.io.schema import RUNS
from camray.outputs.query import connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
CRASHED = "20991231T000000Z-crash1"  # results staged, then the driver died: no commit, no runs row
FAILED = "20991231T000100Z-failed"  # a failed run, recorded by a newer job with more runs columns


@dataclass(frozen=True)
class Run:
    out: Path
    run_id: str
    inputs: Path
    truth: Path


def _leave_debris(out: Path, run_id: str) -> None:
    """A crashed run's file beside the table's (written, never committed), and a failed run's row written by a
    newer camray whose runs table has a column this release does not know, of a type it has never seen."""
    from deltalake import DeltaTable
    from deltalake import Schema as DeltaSchema

    source = sorted((out / "results").glob("*.parquet"))[0]
    table = pq.read_table(source)
    index = table.column_names.index("run_id")
    table = table.set_column(index, "run_id", pa.array([CRASHED] * table.num_rows))
    pq.write_table(table, out / "results" / f"{CRASHED}-a01-00000.parquet")
    row = pq.read_table(out / "runs" / f"{run_id}.parquet").to_pylist()[0]
    later = row["started_at"] + timedelta(hours=1)
    row.update(run_id=FAILED, status="failed", started_at=later, finished_at=later, results=0, errors=0)
    row.update(attempt=2, message="worker node lost")
    zones = pa.field("zones", pa.list_(pa.string()))
    DeltaTable(str(out / "runs")).alter.add_columns(DeltaSchema.from_arrow(pa.schema([zones])).fields)
    newer = pa.Table.from_pylist([row], schema=RUNS).append_column(zones, pa.array([["eu-west-1a"]]))
    pq.write_table(newer, out / "runs" / f"{FAILED}.parquet")
    Output(str(out)).format.add_files("runs", [str(out / "runs" / f"{FAILED}.parquet")], {"camray.run_id": FAILED})


@pytest.fixture(scope="module")
def run(ray_cluster, evalset, photos, tmp_path_factory) -> Run:
    """The job, through `camray run` (the same as `python jobs/cam_batch.py`)."""
    inputs = tmp_path_factory.mktemp("inputs")
    for name, data in input_files(evalset, photos).items():
        (inputs / name).write_bytes(data)
    out = tmp_path_factory.mktemp("local") / "cam"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main_camray(["run", "--input", str(inputs), "--output", str(out)])
    assert status == 0 and "succeeded" in printed.getvalue(), printed.getvalue()
    (run_row,) = pq.read_table(out / "runs").to_pylist()
    assert (run_row["status"], run_row["results"], run_row["errors"]) == ("succeeded", 11, 1)
    (inputs / "vanishing.jpg").unlink()
    _leave_debris(out, run_row["run_id"])
    return Run(out, run_row["run_id"], inputs, evalset[1])


def _camray(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main_camray(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_runs_lists_every_version_of_the_table_newest_first(run, capsys):
    status, out, _ = _camray(capsys, "runs", "--output", str(run.out), "--format", "json")
    assert status == 0
    runs = json.loads(out)
    assert [r["run_id"] for r in runs] == [FAILED, run.run_id]
    assert runs[0]["message"] == "worker node lost" and runs[0]["attempt"] == 2
    assert runs[1]["message"] is None and runs[1]["attempt"] == 1
    assert runs[0]["zones"] == ["eu-west-1a"] and runs[1]["zones"] is None  # a column a row lacks reads as null
    assert (runs[1]["listed"], runs[1]["results"], runs[1]["errors"]) == (12, 11, 1)
    status, out, _ = _camray(capsys, "runs", "--output", str(run.out))
    header = out.splitlines()[0].split()
    assert header[:3] == ["run_id", "status", "started_at"] and "message" in header and "images_per_second" in header
    assert "worker node lost" in out and "(2 rows)" in out


def test_report_renders_in_a_real_browser(run, tmp_path, capsys):
    dest = tmp_path / "report"
    status, out, _ = _camray(capsys, "report", "--output", str(run.out), "--dest", str(dest), "--limit", "20")
    assert status == 0 and out.strip() == f"report: {(dest / 'index.html').resolve()}"
    page = (dest / "index.html").read_text()
    assert run.run_id in page and FAILED not in page and CRASHED not in page  # the newest succeeded run
    assert "Gallery (11 of 11 images)" in page and "efficientnet_lite0" in page
    assert page.count("input missing") == 1 and "vanishing.jpg" in page
    errors = page[page.index("<h2>Errors (1)</h2>") :]
    assert "broken.jpg" in errors and "<td>decode</td>" in errors
    for chart in ("Top-1 classes", "Top-1 scores", "Box area / image area", "Boxes per image"):
        assert f"<figcaption>{chart}" in page
    assert "(prob = " not in page  # the legend is drawn into the pictures, not written in the page
    assert page.count('class="labels"') == 11 and page.count('<span class="swatch"') >= 11 * 5
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    if require_browser() is None:
        pytest.skip("chromium is not installed (make test installs it as root)")
    docs = REPO / "docs" / "report.png" if os.environ.get("CAMRAY_UPDATE_DOCS") == "1" else tmp_path / "report.png"
    check = render_ok(dest / "index.html", screenshot_to=docs)
    # Every entry: its top-1 overlay, its label map and four other classes' maps; the vanished input's are drawn
    # alone.
    assert check.images == 11 * 6 == len(re.findall(r"<img ", page))


def test_report_errors_are_one_line_with_exit_status(run, tmp_path, capsys):
    status, _, err = _camray(capsys, "report", "--output", str(run.out), "--run", "nope", "--dest", str(tmp_path))
    assert status == 2 and err.count("\n") == 1 and "run 'nope' is not in" in err
    status, _, err = _camray(capsys, "report", "--output", str(tmp_path / "nothing"), "--dest", str(tmp_path))
    assert status == 1 and err.startswith("camray report: error:") and "has no runs table" in err


def _documented_queries() -> list[list[str]]:
    text = (REPO / "docs" / "output.md").read_text().replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("camray query --output output ")]


def test_documented_query_examples(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative --dest files land here
    examples = _documented_queries()
    assert len(examples) == 6
    answers = []
    for argv in examples:
        argv = [str(run.out) if arg == "output" else arg for arg in argv[1:]]
        if "--format" not in argv:
            argv[1:1] = ["--format", "json"]
        status, out, err = _camray(capsys, *argv)
        assert status == 0, err
        answers.append(json.loads(out) if out.strip() else None)
    succeeded, first, errors, classes, _, runs = answers
    assert [row["run_id"] for row in succeeded] == [run.run_id]
    assert len(first) == 11 and {row["file"] for row in first} >= {"photo_cat.png", "vanishing.jpg"}
    cat = next(row for row in first if row["file"] == "photo_cat.png")
    assert cat["top1"] in CATS and 0 <= cat["x0"] < cat["x1"] <= 451
    assert errors == [{"stage": "decode", "error_type": errors[0]["error_type"], "images": 1}]
    assert sum(row["images"] for row in classes) == 11 and CATS & {row["label"] for row in classes}
    with open(tmp_path / "boxes.csv", newline="") as handle:
        boxes = list(csv.DictReader(handle))
    assert boxes and all(float(row["score"]) >= 0.3 for row in boxes)
    assert set(boxes[0]) == {"image_uri", "label", "score", "x0", "y0", "x1", "y1"}
    assert {row["status"] for row in runs} == {"succeeded", "failed"}


def test_views_show_the_current_rows_and_runs_every_attempt_when_asked(run, capsys):
    """A Delta table's current version holds no failed or crashed run's rows: `--all-runs` adds their runs rows."""
    sql = "SELECT count(*) AS n, count(DISTINCT run_id) AS runs FROM results"
    for every in ([], ["--all-runs"]):
        _, out, _ = _camray(capsys, "query", "--output", str(run.out), "--format", "json", *every, sql)
        assert json.loads(out) == [{"n": 11, "runs": 1}]
    assert pq.read_table(run.out / "results" / f"{CRASHED}-a01-00000.parquet").num_rows == 11  # there, unread
    con = connect(str(run.out))
    assert con.sql("SELECT count(*) FROM runs").fetchall() == [(1,)]
    assert connect(str(run.out), all_runs=True).sql("SELECT count(*) FROM runs").fetchall() == [(2,)]
    assert con.sql("SELECT count(*) FROM predictions").fetchall() == [(55,)]
    per_image = con.sql("SELECT count(*) FROM boxes GROUP BY image_uri").fetchall()
    assert (
        len(per_image) == 11 and sum(n for (n,) in per_image) == con.sql("SELECT count(*) FROM boxes").fetchall()[0][0]
    )
    # The user's filter reaches the Parquet scan (no full read into DuckDB first).
    plan = "\n".join(row[1] for row in con.sql("EXPLAIN SELECT image_uri FROM results WHERE width > 600").fetchall())
    assert "ARROW_SCAN" in plan and re.search(r"Filters:.*width", plan, re.S), plan


def test_query_output_formats_and_bad_sql(run, tmp_path, capsys):
    sql = "SELECT image_uri, rank, label, score FROM predictions ORDER BY image_uri, rank"
    status, _, _ = _camray(capsys, "query", "--output", str(run.out), "--format", "parquet", "--dest", "p.parquet", sql)
    assert status == 0
    table = pq.read_table("p.parquet")
    assert table.num_rows == 55 and table.column_names == ["image_uri", "rank", "label", "score"]
    os.remove("p.parquet")
    status, out, _ = _camray(capsys, "query", "--output", str(run.out), "--max-rows", "3", sql)
    lines = out.splitlines()
    assert lines[0].split() == ["image_uri", "rank", "label", "score"] and len(lines) == 6
    assert lines[-1] == "(3 rows, more not shown)"
    status, _, err = _camray(capsys, "query", "--output", str(run.out), "SELEKT 1")
    assert status == 2 and err.startswith("camray query: error:") and err.count("\n") == 1
    status, _, err = _camray(capsys, "query", "--output", str(run.out), "--format", "parquet", sql)
    assert status == 2 and "--dest" in err


def _latest_top1(out: Path) -> dict[str, int]:
    con = connect(Output(str(out)))
    rows = con.sql("SELECT image_uri, class_id FROM predictions WHERE rank = 1").fetchall()
    return dict(rows)


def test_coco_export_loads_and_cocoeval_agrees_with_the_evaluator(run, tmp_path, capsys):
    """What is compared, and why it must agree exactly: the evaluator's `box_acc` is the share of truth images
    whose top-1 class's first box (its highest-scoring box of that class) has IoU >= 0.5 with a truth box, IoU
    over pixel-edge boxes. COCOeval, class-agnostic, at IoU 0.5 with one detection per image, given for each
    image the exported detections of its top-1 class, takes the same box (the highest score) and matches it
    with the same IoU (COCO's box IoU on [x, y, w, h] is the pixel-edge IoU) and the same rule (>= 0.5). Every
    image here has one truth box, so its recall is hits / images: `box_acc` exactly. Its AP@0.5 ranks those
    same hits by score: it lies between box_acc**2 and box_acc (+ the 101-point sampling's step)."""
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from camray.evaluation.evaluate import evaluate_rows, load_truth

    dest = tmp_path / "coco.json"
    argv = ["export", "coco", "--output", str(run.out), "--run", run.run_id, "--min-score", "0", "--dest", str(dest)]
    assert _camray(capsys, *argv)[0] == 0
    exported = COCO(str(dest))  # pycocotools loads it
    assert len(exported.getImgIds()) == 11
    images = {image["file_name"]: image for image in exported.dataset["images"]}
    assert str(run.inputs / "photo_cat.png") in images and images[str(run.inputs / "photo_cat.png")]["width"] == 451
    masked = [ann for ann in exported.dataset["annotations"] if "segmentation" in ann]
    assert masked, "the top-1 classes' boxes carry the pseudo-mask"
    for ann in masked:
        mask = coco_mask.decode(ann["segmentation"])
        x, y, w, h = ann["bbox"]
        rows, cols = np.nonzero(mask)
        assert mask.sum() == ann["area"] > 0 and x - 1 <= cols.min() and cols.max() <= x + w and rows.max() <= y + h

    truth_rows = list(csv.DictReader(run.truth.open(newline="")))
    by_name = {Path(uri).name: image for uri, image in images.items()}
    gt = {
        "images": [by_name[row["file"]] for row in truth_rows],
        "categories": [
            {"id": cid, "name": str(cid)} for cid in {int(row["class_id"].split()[0]) for row in truth_rows}
        ],
        "annotations": [],
    }
    for number, row in enumerate(truth_rows, start=1):
        x0, y0, x1, y1 = (float(row[key]) for key in ("x0", "y0", "x1", "y1"))
        gt["annotations"].append(
            {
                "id": number,
                "image_id": by_name[row["file"]]["id"],
                "category_id": int(row["class_id"].split()[0]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
        )
    truth_coco = COCO()
    truth_coco.dataset = gt
    truth_coco.createIndex()
    top1 = _latest_top1(run.out)
    wanted = {image["id"] for image in gt["images"]}
    id_to_uri = {image["id"]: uri for uri, image in images.items()}
    detections = [
        ann
        for ann in exported.dataset["annotations"]
        if ann["image_id"] in wanted and ann["category_id"] == top1[id_to_uri[ann["image_id"]]]
    ]
    evaluator = COCOeval(truth_coco, truth_coco.loadRes(detections), "bbox")
    evaluator.params.useCats = 0
    evaluator.params.catIds = sorted({a["category_id"] for a in detections} | set(truth_coco.getCatIds()))
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.params.maxDets = [1]
    evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0, 1e10]], ["all"]
    evaluator.evaluate()
    evaluator.accumulate()
    recall = float(evaluator.eval["recall"][0, 0, 0, 0])
    precision = evaluator.eval["precision"][0, :, 0, 0, 0]
    ap = float(precision[precision > -1].mean())

    # `camray.evaluation.evaluate` on this run's rows (the crash debris beside them, never committed, is not read).
    rows = Output(str(run.out)).table("results", [run.run_id]).to_pylist()
    report = evaluate_rows({Path(row["image_uri"]).name: row for row in rows}, load_truth(run.truth))
    assert report.images == 10
    assert recall == pytest.approx(report.box_acc, abs=1e-9)
    assert report.box_acc**2 - 0.01 <= ap <= report.box_acc + 0.01
    assert report.box_acc > 0  # the comparison has hits to compare


def test_coco_export_filters(run, tmp_path, capsys):
    dest = tmp_path / "coco.json"
    argv = ["export", "coco", "--output", str(run.out), "--min-score", "0.3", "--classes", "Egyptian cat", "967"]
    status, _, err = _camray(capsys, *argv, "--dest", str(dest))
    assert status == 0, err
    dataset = json.loads(dest.read_text())
    annotations = dataset["annotations"]
    assert all(a["score"] >= 0.3 and a["category_id"] in (285, 967) for a in annotations)
    assert {c["id"] for c in dataset["categories"]} == {a["category_id"] for a in annotations}
    assert len(dataset["images"]) == 11  # images without a kept box stay listed


def test_yolo_export(run, tmp_path, capsys):
    from camray.io.output import Output as Out

    dest = tmp_path / "yolo"
    argv = ["export", "yolo", "--output", str(run.out), "--min-score", "0", "--dest", str(dest)]
    status, out, _ = _camray(capsys, *argv)
    assert status == 0 and out.strip() == f"yolo: {dest.resolve()}"
    classes = (dest / "classes.txt").read_text().splitlines()
    uris = (dest / "images.txt").read_text().splitlines()
    assert len(uris) == 11 and len(set(uris)) == 11
    results = {r["image_uri"]: r for r in Out(str(run.out)).latest_results(None).to_pylist()}
    for uri in uris:
        row = results[uri]
        label_file = dest / "labels" / (Path(uri).stem + ".txt")
        lines = [line.split() for line in label_file.read_text().splitlines()]
        assert len(lines) == len(row["boxes"])
        for (cls, cx, cy, w, h), box in zip(lines, row["boxes"], strict=True):
            assert classes[int(cls)] == box["label"]
            cx, cy, w, h = (float(v) for v in (cx, cy, w, h))
            assert (
                0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6 and 0 <= cy - h / 2 + 1e-6 and cy + h / 2 <= 1 + 1e-6
            )
            assert (cx - w / 2) * row["width"] == pytest.approx(box["x0"], abs=0.01)
            assert (cy + h / 2) * row["height"] == pytest.approx(box["y1"], abs=0.01)


def test_label_maps_in_the_results_and_the_masks_view(run, capsys):
    """One RLE per kept class, in the order of `cams`, at the image's size, never overlapping; the `masks` view a
    row per entry."""
    from camray.io.schema import decode_mask

    rows = Output(str(run.out)).table("results", [run.run_id]).to_pylist()
    assert len(rows) == 11
    entries = 0
    for row in rows:
        masks = row["masks"]
        assert [m["class_id"] for m in masks] == [c["class_id"] for c in row["cams"]] and row["ignore_mask"] is None
        decoded = np.stack([decode_mask(m) for m in masks])
        assert decoded.shape == (len(masks), row["height"], row["width"])
        assert decoded.sum(axis=0).max() == 1 and decoded.any()  # no pixel of two classes; some pixel labelled
        assert all(m["label"] == p["label"] for m, p in zip(masks, row["predictions"], strict=True))
        entries += len(masks)
    status, out, _ = _camray(capsys, "query", "--output", str(run.out), "--format", "json", "SELECT * FROM masks")
    viewed = json.loads(out)
    assert status == 0 and len(viewed) == entries and {v["rank"] for v in viewed} == {1, 2, 3, 4, 5}
    assert set(viewed[0]) == {"image_uri", "run_id", "width", "height", "rank", "class_id", "label", "size", "counts"}


def _voc_devkit(root: Path, export: Path, inputs: Path) -> Path:
    """A VOC2012 tree over the export, as torchvision's `VOCSegmentation` reads one: the export's
    `SegmentationClass/`, each input still there under `JPEGImages/` by its id (a link; PIL reads any format), their
    ids listed."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").symlink_to(export / "SegmentationClass")
    ids = sorted(
        path.stem for path in (export / "SegmentationClass").glob("*.png") if any(inputs.glob(f"{path.stem}.*"))
    )
    for image_id in ids:
        (voc / "JPEGImages" / f"{image_id}.jpg").symlink_to(next(inputs.glob(f"{image_id}.*")))
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_masks_export_reads_back_as_voc_label_maps(run, tmp_path, capsys):
    from torchvision.datasets import VOCSegmentation

    from camray.io.schema import label_map
    from camray.outputs.label_png import read_classes, voc_palette

    dest = tmp_path / "masks"
    status, out, _ = _camray(capsys, "export", "masks", "--output", str(run.out), "--dest", str(dest))
    assert status == 0 and out.strip() == f"masks: {dest.resolve()}"
    names = read_classes(dest / "classes.txt")
    uris = (dest / "images.txt").read_text().splitlines()
    assert len(uris) == 11 and "broken.jpg" not in " ".join(uris)
    rows = {row["image_uri"]: row for row in Output(str(run.out)).latest_results(None).to_pylist()}
    label_of = {row["image_uri"]: {m["class_id"]: m["label"] for m in row["masks"]} for row in rows.values()}
    assert set(names.values()) == {label for labels in label_of.values() for label in labels.values()}
    values = {
        class_id: value
        for uri in uris
        for class_id, label in label_of[uri].items()
        for value, name in names.items()
        if name == label
    }
    for uri in uris:
        png = dest / "SegmentationClass" / f"{Path(uri).stem}.png"  # laid out under the inputs' common folder
        with Image.open(png) as image:
            assert image.mode == "P" and image.getpalette()[: 3 * 256] == voc_palette()
            pixels = np.asarray(image)
        assert np.array_equal(pixels, label_map(rows[uri], values))
        assert set(np.unique(pixels).tolist()) <= {0, *names}
    dataset = VOCSegmentation(str(_voc_devkit(tmp_path / "voc", dest, run.inputs)), year="2012", image_set="train")
    assert len(dataset) == 10  # every input but the one that vanished since the run
    for photo, target in dataset:
        assert target.mode == "P" and target.size == photo.size
        assert set(np.unique(np.asarray(target)).tolist()) <= {0, *names}

    cats = tmp_path / "cats"
    argv = ["export", "masks", "--output", str(run.out), "--classes", "Egyptian cat", "281", "--dest", str(cats)]
    assert _camray(capsys, *argv)[0] == 0
    assert set(read_classes(cats / "classes.txt").values()) <= {"Egyptian cat", "tabby"}
    cat_uri = str(run.inputs / "photo_cat.png")
    with Image.open(cats / "SegmentationClass" / "photo_cat.png") as image:
        pixels = np.asarray(image)
    others = label_map(rows[cat_uri], {c: 1 for c in label_of[cat_uri] if c not in (285, 281)})
    assert np.array_equal(pixels == 255, others == 1)  # the other classes' pixels: undecided, not background


def test_coco_export_carries_each_classs_label_map_mask(run, tmp_path, capsys):
    from pycocotools.coco import COCO

    from camray.io.schema import decode_mask

    dest = tmp_path / "coco.json"
    argv = ["export", "coco", "--output", str(run.out), "--run", run.run_id, "--min-score", "0", "--dest", str(dest)]
    assert _camray(capsys, *argv)[0] == 0
    exported = COCO(str(dest))
    rows = {row["image_uri"]: row for row in Output(str(run.out)).table("results", [run.run_id]).to_pylist()}
    segmented_classes = set()
    for image in exported.dataset["images"]:
        row = rows[image["file_name"]]
        class_masks = {m["class_id"]: decode_mask(m) for m in row["masks"]}
        by_class: dict[int, np.ndarray] = {}
        for ann in exported.loadAnns(exported.getAnnIds(imgIds=[image["id"]])):
            if "segmentation" not in ann:
                continue
            mask = exported.annToMask(ann).astype(bool)
            assert not (mask & ~class_masks[ann["category_id"]]).any() and mask.sum() == ann["area"]
            by_class[ann["category_id"]] = by_class.get(ann["category_id"], False) | mask
            segmented_classes.add((image["id"], ann["category_id"]))
        if by_class:  # boxes of one class may overlap; the segmentations of two classes never do
            assert sum(mask.astype(int) for mask in by_class.values()).max() == 1
    assert len({category for _, category in segmented_classes}) >= 3
    assert any(sum(1 for i, _ in segmented_classes if i == image) >= 2 for image, _ in segmented_classes)
