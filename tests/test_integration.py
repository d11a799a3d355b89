"""End to end: a real Ray head with its job server, a real S3 endpoint, `ray job submit`, the Delta tables read
back by every engine users read them with."""

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.fs as pafs
import pytest
from ray_helpers import submit_command
from readers import delta_rows
from truth import CHELSEA_CAT, iou

from camray.io.sources import S3Settings, filesystem_for

REPO = Path(__file__).resolve().parents[1]
BUCKET = "camray-it"
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}

pytestmark = pytest.mark.integration


def _broken_files(photos: dict[str, bytes]) -> dict[str, bytes]:
    jpeg = photos["grace_hopper.jpg"]
    return {
        "broken/empty.jpg": b"",
        "broken/truncated.jpg": jpeg[: len(jpeg) // 3],
        "broken/notes.png": b"shopping list: milk, eggs\n",
        "broken/noise.jpg": os.urandom(4096),
    }


@pytest.fixture(scope="module")
def uploaded(s3_server, photos):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    files = {f"images/{name}": data for name, data in photos.items()}
    files.update({f"images/{name}": data for name, data in _broken_files(photos).items()})
    for key, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return files


def _storage_options() -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}


def _engines_read_the_same_current_rows(uri: str, columns: list[str]) -> list[dict]:
    """`columns` of `uri`'s current rows through deltalake, Polars, DuckDB (over deltalake's Arrow dataset) and Ray
    Data's `read_delta`, each with no join; asserted equal, returned as deltalake reads them (in image order)."""
    import polars as pl
    import ray
    from deltalake import DeltaTable

    table = DeltaTable(uri, storage_options=_storage_options())
    by_deltalake = table.to_pyarrow_table(columns=columns).sort_by("image_uri").to_pylist()
    by_polars = pl.read_delta(uri, storage_options=_storage_options()).select(columns).sort("image_uri").to_dicts()
    con = duckdb.connect()
    con.register("current", table.to_pyarrow_dataset())
    by_duckdb = con.sql(f"SELECT {', '.join(columns)} FROM current ORDER BY image_uri").to_arrow_table().to_pylist()
    by_ray = sorted(
        ray.data.read_delta(uri, storage_options=_storage_options(), columns=columns).take_all(),
        key=lambda row: row["image_uri"],
    )
    assert by_deltalake == by_polars == by_duckdb == [dict(row) for row in by_ray]
    return by_deltalake


def test_submitted_job_annotates_s3_and_accounts_for_every_input(ray_cluster, uploaded, tmp_path):
    entrypoint = (
        f"{sys.executable} jobs/cam_batch.py --input s3://{BUCKET}/images --output s3://{BUCKET}/out "
        "--runtime.batch_size 4"
    )
    submitted = subprocess.run(
        submit_command(ray_cluster, *entrypoint.split()),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, log[-4000:]
    assert "succeeded" in log and "10 listed" in log

    fs, _ = filesystem_for(f"s3://{BUCKET}", S3Settings())
    results = delta_rows(f"s3://{BUCKET}/out", "results").to_pylist()
    errors = delta_rows(f"s3://{BUCKET}/out", "errors").to_pylist()
    runs = delta_rows(f"s3://{BUCKET}/out", "runs").to_pylist()

    # Every listed input exactly once, in results or in errors.
    seen = sorted(row["image_uri"] for row in results + errors)
    assert seen == sorted(f"s3://{BUCKET}/{key}" for key in uploaded)
    assert len(results) == 6 and len(errors) == 4
    by_name = {row["image_uri"].rsplit("/", 1)[-1]: row for row in results}
    chelsea = by_name["chelsea.png"]
    assert chelsea["predictions"][0]["label"] in CATS
    box = chelsea["boxes"][0]
    assert iou((box["x0"], box["y0"], box["x1"], box["y1"]), CHELSEA_CAT) > 0.5
    assert by_name["grace_hopper.jpg"]["predictions"][0]["label"] == "military uniform"
    assert (chelsea["width"], chelsea["height"]) == (451, 300)
    assert len(chelsea["content_sha256"]) == 64

    reasons = {row["image_uri"].rsplit("/", 1)[-1]: row for row in errors}
    assert reasons["empty.jpg"]["error_type"] == "EmptyFile"
    assert "truncated" in reasons["truncated.jpg"]["message"].lower()
    assert reasons["notes.png"]["error_type"] == "UnidentifiedImageError"
    assert all(row["stage"] == "decode" and row["message"] for row in errors)

    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    assert (runs[0]["listed"], runs[0]["results"], runs[0]["errors"]) == (10, 6, 4)
    assert len(runs[0]["weights_sha256"]) == 64
    assert fs.get_file_info(f"{BUCKET}/out/_staging").type in (
        pafs.FileType.NotFound,
        pafs.FileType.Directory,
    )
    staged = fs.get_file_info(pafs.FileSelector(f"{BUCKET}/out/_staging", allow_not_found=True, recursive=True))
    assert not [item for item in staged if item.type == pafs.FileType.File]

    # The same current rows through every engine users read Delta tables with, none of them joining on runs.
    current = _engines_read_the_same_current_rows(f"s3://{BUCKET}/out/results", ["image_uri", "run_id", "width"])
    assert [row["image_uri"] for row in current] == sorted(row["image_uri"] for row in results)
    assert len(_engines_read_the_same_current_rows(f"s3://{BUCKET}/out/errors", ["image_uri", "stage"])) == 4

    # The evaluator reads the same results from the endpoint.
    from camray.evaluation.evaluate import evaluate

    truth = tmp_path / "truth.csv"
    truth.write_text("file,x0,y0,x1,y1,class_id\nchelsea.png,20,0,400,300,281 282 283 284 285\n")
    report = evaluate(f"s3://{BUCKET}/out/results", truth)
    assert report.images == 1 and report.box_acc == 1.0 and report.top1_loc == 1.0


def test_nightly_rerun_skips_what_is_done(ray_cluster, uploaded):
    """A second run over the same bucket re-tries only the failures, and a new photo."""
    import boto3

    from camray.config import load_config
    from camray.runner import run_job

    boto3.client("s3").put_object(Bucket=BUCKET, Key="images/new/rocket_copy.jpg", Body=uploaded["images/rocket.jpg"])
    config = load_config(
        overrides={
            "source.uri": f"s3://{BUCKET}/images",
            "sink.uri": f"s3://{BUCKET}/out",
            "runtime.batch_size": 4,
        }
    )
    summary = run_job(config)
    assert (summary.listed, summary.skipped, summary.results, summary.errors) == (11, 6, 1, 4)
    assert summary.status == "succeeded"
    # Both nights' staging folders are gone, markers included: none reads as an unfinished run to the next night.
    staging = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="out/_staging/").get("Contents", [])
    assert [item["Key"] for item in staging if item["Key"] != "out/_staging/"] == []


def test_a_crashed_run_leaves_nothing_that_looks_complete(ray_cluster, tmp_path, photos):
    """Writes fail (the staging folder cannot be created): the job raises, no row is committed, and the run is
    recorded as failed."""
    from camray.config import load_config
    from camray.runner import run_job

    images = tmp_path / "images"
    images.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (images / name).write_bytes(photos[name])
    out = tmp_path / "out"
    out.mkdir()
    (out / "_staging").write_text("a file where the staging folder should go")
    config = load_config(overrides={"source.uri": str(images), "sink.uri": str(out)})
    with pytest.raises(Exception):  # noqa: B017 - Ray wraps the write error in its own types
        run_job(config)
    assert delta_rows(out, "results").num_rows == delta_rows(out, "errors").num_rows == 0
    runs = delta_rows(out, "runs").to_pylist()
    assert [run["status"] for run in runs] == ["failed"]


def test_a_torchvision_model_with_its_weights_file_runs_grad_cam_in_the_actors(ray_cluster, tmp_path, photos):
    """`--model NAME --weights URI` for a network without a GAP + linear ending: Grad-CAM by default."""
    import pyarrow.parquet as pq
    import torch
    import torchvision

    from camray.config import load_config
    from camray.runner import run_job

    images = tmp_path / "images"
    images.mkdir()
    for name in ("chelsea.png", "rocket.jpg", "grace_hopper.jpg"):
        (images / name).write_bytes(photos[name])
    weights = tmp_path / "mobilenet_v3_small.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    config = load_config(
        overrides={
            "source.uri": str(images),
            "sink.uri": str(tmp_path / "out"),
            "model.name": "mobilenet_v3_small",
            "model.weights": str(weights),
            "cam.top_k": 3,
        }
    )
    summary = run_job(config)
    assert (summary.status, summary.results, summary.errors) == ("succeeded", 3, 0)
    rows = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert {row["method"] for row in rows} == {"gradcam"} and {row["model"] for row in rows} == {"mobilenet_v3_small"}
    from camray.io.schema import decode_heatmap

    for row in rows:
        assert len(row["cams"]) == 3
        # Random weights can give a class no positive evidence: a flat map has no box, any other has one.
        boxed = {box["class_id"] for box in row["boxes"]}
        for cam in row["cams"]:
            assert (cam["class_id"] in boxed) == (decode_heatmap(cam).max() > 0)
    runs = pq.read_table(tmp_path / "out" / "runs").to_pylist()
    assert runs[0]["weights_source"] == str(weights) and len(runs[0]["weights_sha256"]) == 64


def test_device_decoding_through_ray_and_files_sized_by_rows(ray_cluster, tmp_path, photos, monkeypatch):
    """`runtime.decode: device` in the actors (on the CPU here), with a corrupt JPEG among real photos; one
    Parquet file per `sink.rows_per_file` rows rather than one per block. The second run's actors hold two batches
    at once, each called in a thread of its own, as a GPU actor's are (`camray.planning.GPU_CALLS_PER_ACTOR`)."""
    import dataclasses

    import pyarrow.parquet as pq

    from camray import runner
    from camray.config import load_config
    from camray.runner import run_job

    images = tmp_path / "images"
    images.mkdir()
    for name, data in photos.items():
        (images / name).write_bytes(data)
    (images / "truncated.jpg").write_bytes(photos["grace_hopper.jpg"][:5000])
    planned = runner.plan_resources

    def two_calls_per_actor(*args, **kwargs):
        return dataclasses.replace(planned(*args, **kwargs), calls_per_actor=2)

    counts = {}
    for rows_per_file in (4096, 2):
        if rows_per_file == 2:
            monkeypatch.setattr(runner, "plan_resources", two_calls_per_actor)
        out = tmp_path / f"out-{rows_per_file}"
        config = load_config(
            overrides={
                "source.uri": str(images),
                "sink.uri": str(out),
                "runtime.decode": "device",
                "runtime.batch_size": 2,
                "runtime.decode_batch_size": 2,
                "sink.rows_per_file": rows_per_file,
            }
        )
        summary = run_job(config)
        assert (summary.status, summary.results, summary.errors) == ("succeeded", len(photos), 1)
        errors = pq.read_table(out / "errors").to_pylist()
        assert [(e["image_uri"].rsplit("/", 1)[-1], e["stage"]) for e in errors] == [("truncated.jpg", "decode")]
        results = pq.read_table(out / "results").to_pylist()
        cat = next(r for r in results if r["image_uri"].endswith("chelsea.png"))
        assert cat["predictions"][0]["label"] in CATS
        counts[rows_per_file] = len([*(out / "results").glob("*.parquet"), *(out / "errors").glob("*.parquet")])
    assert counts[4096] == 2  # one results file, one errors file
    assert counts[2] > 2
