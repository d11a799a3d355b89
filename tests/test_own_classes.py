"""Your model, your classes, through the real job on the shared Ray head: checkpoints with 20 outputs written as
training code writes them (a Lite model under `model`, a torchvision ResNet by DistributedDataParallel, a timm
ResNet by Lightning, a timm ConvNeXt as safetensors), class names from a local file and from `s3://`, a sigmoid
head with `cam.min_score`, labels from an ImageFolder layout and from CSV, JSON Lines and Parquet manifests, labels
that name no class and images without labels as error rows, labels in the done rule, and an output of the previous
schema (version 2) still read by `query`, `report` and `export`.

One run per model over a few small photos; the cost is each run's actor start.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from ray_helpers import free_port
from readers import delta_rows, runs, succeeded_inputs

pytestmark = pytest.mark.integration

CLASSES = ["rust", "dent", "crack", "scratch", "stain", *(f"kind {index}" for index in range(5, 20))]
BUCKET = "own-classes"


@pytest.fixture(scope="module")
def small(photos, tmp_path_factory) -> dict[str, Path]:
    """Three small JPEGs of the sample photos, each side at least the label maps' grid (112 cells for Lite0 and
    ResNet-18 at 224), so that a region of a label map is a region of its mask."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("own-classes-photos")
    out = {}
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        image = Image.open(io.BytesIO(photos[name])).convert("RGB")
        image.thumbnail((192, 192))
        out[name.split(".")[0]] = folder / f"{name.split('.')[0]}.jpg"
        image.save(out[name.split(".")[0]], quality=90)
    return out


def _run(**overrides):
    from camray.config import load_config
    from camray.runner import run_job

    base = {"runtime.batch_size": 4, "runtime.num_actors": 1, "cam.top_k": 5}
    return run_job(load_config(overrides={**base, **overrides}))


def _results(out: Path) -> dict[str, dict]:
    """The current rows of `results`, by file stem."""
    return {Path(row["image_uri"]).stem: row for row in delta_rows(out, "results").to_pylist()}


def _errors(out: Path) -> dict[str, dict]:
    rows = delta_rows(out, "errors")
    return {} if rows is None else {Path(row["image_uri"]).stem: row for row in rows.to_pylist()}


def _lite0_with_a_sigmoid_head(path: Path) -> None:
    """Lite0's trained features under a new 20-class head whose first three classes are present in every image
    (bias +6: probability ~1) and the others absent (bias -6), saved under `model` as many scripts do."""
    from camray.config import ModelConfig
    from camray.models import resolve_setup

    state = resolve_setup(ModelConfig()).module.state_dict()
    generator = torch.Generator().manual_seed(0)
    state["classifier.1.weight"] = torch.randn(20, 1280, generator=generator) * 1e-3
    state["classifier.1.bias"] = torch.tensor([6.0] * 3 + [-6.0] * 17)
    torch.save({"model": state, "epoch": 12}, path)


def _resnet18_by_ddp(path: Path) -> None:
    """A torchvision ResNet-18 with 20 outputs, saved from DistributedDataParallel (every key `module.`)."""
    import torch.distributed as dist
    import torchvision

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torchvision.models.resnet18(num_classes=20))
        torch.save(model.state_dict(), path)
    finally:
        dist.destroy_process_group()


def _timm_by_lightning(path: Path, tmp: Path) -> None:
    """timm's ResNet-10t with 20 outputs, trained one step by Lightning and checkpointed by its Trainer."""
    import lightning
    import timm

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"classes": 20})
            self.model = timm.create_model("resnet10t", num_classes=20)

        def training_step(self, batch, _index):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 64, 64), torch.randint(0, 20, (4,)))
    trainer = lightning.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp),
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=2))
    trainer.save_checkpoint(path)


def _timm_safetensors(path: Path) -> None:
    import timm
    from safetensors.torch import save_file
    from zoo import published_shaped_state

    save_file(published_shaped_state(timm.create_model("convnext_atto", num_classes=20)), str(path))


def test_fine_tuned_heads_labels_and_classes_through_the_job(ray_cluster, s3_server, small, tmp_path):
    import boto3

    from camray.io.schema import decode_heatmap

    labels_file = tmp_path / "classes.txt"
    labels_file.write_text("\n".join(CLASSES) + "\n")
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    boto3.client("s3").put_object(Bucket=BUCKET, Key="labels/classes.json", Body=json.dumps(CLASSES).encode())
    labels_s3 = f"s3://{BUCKET}/labels/classes.json"

    # 1. Lite0, a sigmoid head and `cam.min_score`; labels by sub-folder (ImageFolder), names from a local file.
    folder = tmp_path / "by-class"
    for name, kind in (("chelsea", "dent"), ("coffee", "stain")):
        (folder / kind).mkdir(parents=True)
        shutil.copy(small[name], folder / kind / f"{name}.jpg")
    lite = tmp_path / "lite0-20.pth"
    _lite0_with_a_sigmoid_head(lite)
    out = tmp_path / "out-lite"
    summary = _run(
        **{"source.uri": str(folder), "source.labels_from": "folder", "sink.uri": str(out)},
        **{"model.weights": str(lite), "model.labels": str(labels_file), "model.head": "sigmoid"},
        **{"cam.min_score": 0.5},
    )
    assert (summary.status, summary.results, summary.errors) == ("succeeded", 2, 0)
    rows = _results(out)
    assert [label["label"] for label in rows["chelsea"]["labels"]] == ["dent"]
    assert rows["coffee"]["labels"] == [{"class_id": 4, "label": "stain"}]
    for row in rows.values():
        assert len(row["predictions"]) == 5
        assert {p["class_id"] for p in row["predictions"][:3]} == {0, 1, 2}
        assert sum(p["score"] for p in row["predictions"]) > 2.9  # independent probabilities, not a softmax
        kept = [p["class_id"] for p in row["predictions"] if p["score"] >= 0.5]
        assert [cam["class_id"] for cam in row["cams"]] == kept == [p["class_id"] for p in row["predictions"][:3]]
        assert {box["class_id"] for box in row["boxes"]} <= set(kept) and row["mask"]["class_id"] == kept[0]
        assert all(box["label"] == CLASSES[box["class_id"]] for box in row["boxes"])

    # 2. torchvision ResNet-18 saved by DDP, names from s3://; a CSV manifest, `given` classes, bad labels.
    resnet = tmp_path / "resnet18-20.pt"
    _resnet18_by_ddp(resnet)
    manifest = tmp_path / "labelled.csv"
    manifest.write_text(
        "uri,labels,version\n"
        f"{small['chelsea']},dent|7,v1\n"
        f"{small['coffee']},stain,v1\n"
        f"{small['astronaut']},rust | no such class,v1\n"
        f"{folder / 'dent' / 'chelsea.jpg'},,v1\n"
    )
    out = tmp_path / "out-resnet"
    given = {"source.uri": str(manifest), "sink.uri": str(out), "cam.classes": "given"}
    model = {"model.name": "resnet18", "model.weights": str(resnet), "model.labels": labels_s3}
    summary = _run(**given, **model)
    assert (summary.status, summary.listed, summary.results, summary.errors) == ("succeeded", 4, 2, 2)
    rows, errors = _results(out), _errors(out)
    assert sorted(cam["class_id"] for cam in rows["chelsea"]["cams"]) == [1, 7]
    assert [label["label"] for label in rows["chelsea"]["labels"]] == ["dent", "kind 7"]
    assert [cam["class_id"] for cam in rows["coffee"]["cams"]] == [4] and rows["coffee"]["mask"]["class_id"] == 4
    assert all(box["class_id"] in (1, 7) and box["score"] > 0 for box in rows["chelsea"]["boxes"])
    for row in (rows["chelsea"], rows["coffee"]):  # given classes under the default preset's CRF: label-map boxes
        _boxes_are_regions_of_their_masks(row)
    assert max(decode_heatmap(cam).max() for cam in rows["coffee"]["cams"]) == 1.0
    assert errors["astronaut"]["stage"] == "labels" and "'no such class'" in errors["astronaut"]["message"]
    assert (errors["chelsea"]["stage"], errors["chelsea"]["error_type"]) == ("labels", "MissingLabels")
    from camray.outputs.query import connect

    given_labels = connect(str(out)).sql("SELECT label FROM labels ORDER BY label").fetchall()
    assert given_labels == [("dent",), ("kind 7",), ("stain",)]
    listed = [
        str(small["chelsea"]),
        str(small["coffee"]),
        str(small["astronaut"]),
        str(folder / "dent" / "chelsea.jpg"),
    ]
    assert succeeded_inputs(out) == dict.fromkeys(listed, 1)

    # The same manifest, coffee's label changed: coffee is redone, chelsea skipped, the error rows retried.
    manifest.write_text(manifest.read_text().replace(",stain,", ",crack|stain,"))
    again = _run(**given, **model)
    assert (again.status, again.skipped, again.results, again.errors) == ("succeeded", 1, 1, 2)
    newest = [row for row in delta_rows(out, "results").to_pylist() if row["run_id"] == again.run_id]
    assert [(Path(row["image_uri"]).stem, sorted(c["class_id"] for c in row["cams"])) for row in newest] == [
        ("coffee", [2, 4])
    ]
    _previous_schema_is_still_read(out, tmp_path)

    # 3. timm ResNet-10t checkpointed by Lightning; a JSON Lines manifest, the union of given and predicted.
    lightning_ckpt = tmp_path / "resnet10t-20.ckpt"
    _timm_by_lightning(lightning_ckpt, tmp_path)
    lines = [{"uri": str(small["chelsea"]), "labels": ["crack", 9]}, {"uri": str(small["coffee"])}]
    jsonl = tmp_path / "labelled.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out-timm-resnet"
    summary = _run(
        **{"source.uri": str(jsonl), "sink.uri": str(out), "cam.classes": "both", "cam.top_k": 2},
        **{"model.name": "timm:resnet10t", "model.input_size": 64, "model.weights": str(lightning_ckpt)},
        **{"model.labels": str(labels_file)},
    )
    assert (summary.status, summary.results, summary.errors) == ("succeeded", 2, 0)
    rows = _results(out)
    chelsea = rows["chelsea"]
    predicted = [p["class_id"] for p in chelsea["predictions"]]
    assert {cam["class_id"] for cam in chelsea["cams"]} == {2, 9, *predicted} and len(predicted) == 2
    assert [cam["class_id"] for cam in rows["coffee"]["cams"]] == [p["class_id"] for p in rows["coffee"]["predictions"]]
    assert rows["coffee"]["labels"] is None

    # 4. timm ConvNeXt (a LayerNorm head: Grad-CAM) as safetensors, no labels file; a Parquet manifest, the tiled
    # preset mapping the given classes.
    convnext = tmp_path / "convnext_atto-20.safetensors"
    _timm_safetensors(convnext)
    table = tmp_path / "labelled.parquet"
    pq.write_table(
        pa.table({"uri": [str(small["chelsea"]), str(small["coffee"])], "labels": [["3", "11"], ["19"]]}), table
    )
    out = tmp_path / "out-timm-convnext"
    summary = _run(
        **{"source.uri": str(table), "sink.uri": str(out), "cam.classes": "given"},
        **{"model.name": "timm:convnext_atto", "model.input_size": 64, "model.weights": str(convnext)},
        **{"tiling.enabled": True},
    )
    assert (summary.status, summary.results, summary.errors) == ("succeeded", 2, 0)
    rows = _results(out)
    assert sorted(cam["class_id"] for cam in rows["chelsea"]["cams"]) == [3, 11]
    assert [label["label"] for label in rows["chelsea"]["labels"]] == ["class_3", "class_11"]
    assert [cam["class_id"] for cam in rows["coffee"]["cams"]] == [19] and rows["coffee"]["method"] == "gradcam"
    (run,) = runs(out)
    assert run["weights_source"] == str(convnext)


def _boxes_are_regions_of_their_masks(row: dict) -> None:
    """Each box of a row is the bounding box of a connected region of its class's mask in `masks`, to the pixel
    that the label map's grid rounds it by: the mask is the grid resampled to the image, which keeps its regions
    where the image is at least the grid's size."""
    import cv2
    from pycocotools import mask as coco_mask

    regions = {}
    for entry in row["masks"]:
        mask = coco_mask.decode({"size": entry["size"], "counts": entry["counts"].encode()})
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        regions[entry["class_id"]] = [(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:count]]
    assert row["boxes"]
    for box in row["boxes"]:
        corners = (box["x0"], box["y0"], box["x1"], box["y1"])
        assert any(
            max(abs(a - b) for a, b in zip(corners, region, strict=True)) <= 1.0 for region in regions[box["class_id"]]
        )


def _previous_schema_is_still_read(out: Path, tmp_path: Path) -> None:
    """The output's files rewritten as schema version 2 wrote them (no `labels`, label maps; metadata 2): query,
    report and the exports read it, the new columns as null; the masks export takes each row's `mask`. Its current
    rows: chelsea's of the first run, coffee's of the second."""
    from camray.io.output import Output
    from camray.io.schema import RESULTS, decode_mask
    from camray.outputs.export import coco, write_yolo
    from camray.outputs.label_png import read_classes, read_label_png
    from camray.outputs.mask_export import write_masks
    from camray.outputs.query import connect
    from camray.outputs.report import write_report

    old = tmp_path / "version-2"
    shutil.copytree(out, old)
    added = ("labels", "masks", "ignore_mask")
    v2 = pa.schema([field for field in RESULTS if field.name not in added], metadata={b"camray.schema_version": b"2"})
    for path in (old / "results").glob("*.parquet"):
        pq.write_table(pq.read_table(path).select(v2.names).cast(v2), path)
    assert pq.read_schema(next((old / "results").glob("*.parquet"))).metadata[b"camray.schema_version"] == b"2"
    con = connect(str(old))
    assert con.sql("SELECT count(*), count(labels) FROM results").fetchall() == [(2, 0)]
    assert con.sql("SELECT count(*) FROM labels").fetchall() == [(0,)]
    assert con.sql("SELECT count(*) FROM masks").fetchall() == [(0,)]
    assert con.sql("SELECT count(*) FROM boxes").fetchall()[0][0] > 0
    page = write_report(Output(str(old)), tmp_path / "report-v2")
    assert "coffee.jpg" in page.read_text() and 'class="labels"' not in page.read_text()
    masks = write_masks(Output(str(old)), tmp_path / "masks-v2")
    names = read_classes(masks / "classes.txt")
    for row in Output(str(old)).latest_results(None).to_pylist():
        pixels = read_label_png(masks / "SegmentationClass" / f"{Path(row['image_uri']).stem}.png")
        value = next(v for v, name in names.items() if name == CLASSES[row["mask"]["class_id"]])
        assert np.array_equal(pixels == value, decode_mask(row["mask"])) and set(np.unique(pixels)) <= {0, value}
    document = coco(Output(str(old)), min_score=0.0)
    assert {category["supercategory"] for category in document["categories"]} == {"resnet18"}
    assert {category["name"] for category in document["categories"]} <= set(CLASSES)
    write_yolo(Output(str(old)), tmp_path / "yolo-v2", min_score=0.0)
    assert set((tmp_path / "yolo-v2" / "classes.txt").read_text().split("\n")[:-1]) <= set(CLASSES)
