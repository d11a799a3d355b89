"""torchvision's transformer families and twelve timm families through the real job on a local Ray head: maps and
boxes for every image, the method each family's head allows, the weights' provenance in the runs row.

One run per model, one after the other on the shared head, two small photos each: the cost is the actor's start.
"""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
from zoo import TIMM_FAMILIES, TORCHVISION_TRANSFORMERS, save_weights

pytestmark = pytest.mark.integration

TOP_K = 2


@pytest.fixture(scope="module")
def two_photos(photos, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("two-photos")
    for name in ("chelsea.png", "coffee.png"):
        image = Image.open(io.BytesIO(photos[name])).convert("RGB")
        image.thumbnail((128, 128))
        image.save(folder / f"{name.rsplit('.', 1)[0]}.jpg", quality=90)
    return folder


def test_every_family_gives_maps_and_boxes_through_the_job(ray_cluster, two_photos, tmp_path):
    from camray.config import load_config
    from camray.io.schema import decode_heatmap
    from camray.models import get_spec
    from camray.models.weights import sha256_of
    from camray.runner import run_job

    for family, name, input_size in (*TORCHVISION_TRANSFORMERS, *TIMM_FAMILIES):
        weights = save_weights(name, tmp_path, input_size)
        out = tmp_path / f"out-{weights.stem}"
        overrides = {
            "source.uri": str(two_photos),
            "sink.uri": str(out),
            "model.name": name,
            "model.weights": str(weights),
            "cam.top_k": TOP_K,
            "runtime.batch_size": 2,
            "runtime.num_actors": 1,
        }
        if input_size:
            overrides["model.input_size"] = input_size
        config = load_config(overrides=overrides)
        summary = run_job(config)
        assert (summary.status, summary.results, summary.errors) == ("succeeded", 2, 0), family
        method = get_spec(name, input_size=input_size).default_method
        rows = pq.read_table(out / "results").to_pylist()
        assert {row["model"] for row in rows} == {name} and {row["method"] for row in rows} == {method}, family
        for row in rows:
            assert len(row["predictions"]) == TOP_K and len(row["cams"]) == TOP_K, family
            assert max(decode_heatmap(cam).max() for cam in row["cams"]) == 1.0, family
            assert row["boxes"], f"{family}: no box for {row['image_uri']}"
            for box in row["boxes"]:
                assert 0 <= box["x0"] < box["x1"] <= row["width"] and 0 <= box["y0"] < box["y1"] <= row["height"]
        (run,) = pq.read_table(out / "runs").to_pylist()
        assert run["weights_source"] == str(weights) and run["weights_sha256"] == sha256_of(weights), family
