"""torchvision's transformer families and twelve timm families, each from a weights file shaped as the published
ones: every family in the actors' predictor, built in process as a run builds it, and one family of each kind
through the real job on a local Ray head.

A family's run through the job costs its actor's start (a fresh interpreter importing torch and the family's
library, about five seconds) and tests nothing of the family that the predictor does not: the families differ in
their spec, weights, method and layout, which the predictor holds, and share every other step of the job. So every
family goes through the predictor, and through the job one family of each source, method and layout that the
families span (`THROUGH_THE_JOB`), with its weights' provenance in the runs row.
"""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from zoo import TIMM_FAMILIES, TORCHVISION_TRANSFORMERS, save_weights

from camray.config import load_config
from camray.evaluation.sweep import decoded_batch, predictor_of
from camray.io.schema import decode_heatmap
from camray.models import get_spec

TOP_K = 2
FAMILIES = (*TORCHVISION_TRANSFORMERS, *TIMM_FAMILIES)
# One family of each (library, method, layout) among FAMILIES but torchvision's ViT and MaxViT, whose Grad-CAM on
# tokens and on channels-first maps timm's ViT and ConvNeXt take through the job.
THROUGH_THE_JOB = (
    "swin_t",
    "timm:resnet10t",
    "timm:convnext_atto",
    "timm:swin_tiny_patch4_window7_224",
    "timm:vit_tiny_patch16_224",
)


def test_the_job_takes_every_source_method_and_layout_of_the_families():
    def kind(name: str, input_size: int | None) -> tuple[str, str, str]:
        spec = get_spec(name, input_size=input_size)
        return ("timm" if name.startswith("timm:") else "torchvision", spec.default_method, spec.layout)

    kinds = {kind(name, size) for _, name, size in FAMILIES}
    taken = {kind(name, size) for _, name, size in FAMILIES if name in THROUGH_THE_JOB}
    library_blind = {(method, layout) for _, method, layout in kinds}
    assert {(method, layout) for _, method, layout in taken} == library_blind
    assert {library for library, _, _ in taken} == {"timm", "torchvision"}


@pytest.fixture(scope="module")
def two_photos(photos, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("two-photos")
    for name in ("chelsea.png", "coffee.png"):
        image = Image.open(io.BytesIO(photos[name])).convert("RGB")
        image.thumbnail((128, 128))
        image.save(folder / f"{name.rsplit('.', 1)[0]}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Each family's weights file, saved once for both tests."""
    folder = tmp_path_factory.mktemp("zoo-weights")
    return {name: save_weights(name, folder, input_size) for _, name, input_size in FAMILIES}


def _config(name: str, input_size: int | None, weights_file, source, sink):
    overrides = {
        "source.uri": str(source),
        "sink.uri": str(sink),
        "model.name": name,
        "model.weights": str(weights_file),
        "cam.top_k": TOP_K,
        "runtime.batch_size": 2,
        "runtime.num_actors": 1,
    }
    if input_size:
        overrides["model.input_size"] = input_size
    return load_config(overrides=overrides)


def _assert_maps_and_boxes(rows: list[dict], name: str, input_size: int | None, family: str) -> None:
    method = get_spec(name, input_size=input_size).default_method
    assert len(rows) == 2, family
    assert {row["model"] for row in rows} == {name} and {row["method"] for row in rows} == {method}, family
    for row in rows:
        assert len(row["predictions"]) == TOP_K and len(row["cams"]) == TOP_K, family
        assert max(decode_heatmap(cam).max() for cam in row["cams"]) == 1.0, family
        assert row["boxes"], f"{family}: no box for {row['image_uri']}"
        for box in row["boxes"]:
            assert 0 <= box["x0"] < box["x1"] <= row["width"] and 0 <= box["y0"] < box["y1"] <= row["height"]


@pytest.mark.parametrize(("family", "name", "input_size"), FAMILIES, ids=[name for _, name, _ in FAMILIES])
def test_every_family_gives_maps_and_boxes_in_the_actors_predictor(
    family, name, input_size, weights, two_photos, tmp_path
):
    config = _config(name, input_size, weights[name], two_photos, tmp_path / "out")
    predictor = predictor_of(config)
    rows = predictor(decoded_batch(config, predictor, sorted(two_photos.iterdir()))).to_pylist()
    assert [row["error_type"] for row in rows] == [None, None], [row["message"] for row in rows]
    _assert_maps_and_boxes(rows, name, input_size, family)


@pytest.mark.integration
def test_a_family_of_each_kind_gives_maps_and_boxes_through_the_job(ray_cluster, two_photos, weights, tmp_path):
    from camray.models.weights import sha256_of
    from camray.runner import run_job

    for family, name, input_size in FAMILIES:
        if name not in THROUGH_THE_JOB:
            continue
        out = tmp_path / f"out-{weights[name].stem}"
        summary = run_job(_config(name, input_size, weights[name], two_photos, out))
        assert (summary.status, summary.results, summary.errors) == ("succeeded", 2, 0), family
        _assert_maps_and_boxes(pq.read_table(out / "results").to_pylist(), name, input_size, family)
        (run,) = pq.read_table(out / "runs").to_pylist()
        assert run["weights_source"] == str(weights[name]) and run["weights_sha256"] == sha256_of(weights[name])
