"""Every `camray` tool on a real run over the moto S3 server: inputs and output in a bucket, reached through the
job's own S3 settings (`AWS_ENDPOINT_URL`, or `--s3-endpoint-url`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from headless_chromium import render_ok, require_browser
from run_inputs import input_files

from camray.cli import main_camray

pytestmark = pytest.mark.integration

BUCKET = "camray-outputs"
OUT = f"s3://{BUCKET}/cam"


@pytest.fixture(scope="module")
def s3_run(ray_cluster, s3_server, evalset, photos) -> str:
    import boto3

    from camray.config import load_config
    from camray.runner import run_job

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for name, data in input_files(evalset, photos).items():
        s3.put_object(Bucket=BUCKET, Key=f"images/{name}", Body=data)
    config = load_config(overrides={"source.uri": f"s3://{BUCKET}/images", "sink.uri": OUT})
    summary = run_job(config)
    assert (summary.status, summary.results, summary.errors) == ("succeeded", 11, 1)
    s3.delete_object(Bucket=BUCKET, Key="images/vanishing.jpg")
    return summary.run_id


def _camray(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main_camray(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_runs_and_query_over_s3(s3_run, s3_server, capsys, monkeypatch):
    status, out, _ = _camray(capsys, "runs", "--output", OUT, "--format", "json")
    assert status == 0 and [row["run_id"] for row in json.loads(out)] == [s3_run]
    # The endpoint from the flag alone: the environment no longer names it.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    sql = "SELECT label, count(*) AS images FROM predictions WHERE rank = 1 GROUP BY label"
    argv = ["query", "--output", OUT, "--s3-endpoint-url", s3_server, "--format", "json", sql]
    status, out, err = _camray(capsys, *argv)
    assert status == 0, err
    assert sum(row["images"] for row in json.loads(out)) == 11
    sql = "SELECT image_uri, stage FROM errors"
    status, out, _ = _camray(capsys, "query", "--output", OUT, "--s3-endpoint-url", s3_server, "--format", "json", sql)
    assert json.loads(out) == [{"image_uri": f"s3://{BUCKET}/images/broken.jpg", "stage": "decode"}]


def test_report_over_s3_renders_and_names_the_vanished_input(s3_run, tmp_path, capsys):
    dest = tmp_path / "report"
    status, _, err = _camray(capsys, "report", "--output", OUT, "--dest", str(dest), "--limit", "4")
    assert status == 0, err
    page = (dest / "index.html").read_text()
    assert s3_run in page and "Gallery (4 of 11 images)" in page
    status, _, _ = _camray(capsys, "report", "--output", OUT, "--dest", str(dest), "--run", s3_run, "--limit", "11")
    page = (dest / "index.html").read_text()
    assert page.count("input missing") == 1 and f"s3://{BUCKET}/images/vanishing.jpg" in page
    # Five maps and a label map an image; the 4-image report's pictures were replaced.
    assert len(list((dest / "images").iterdir())) == 66
    if require_browser() is None:
        pytest.skip("chromium is not installed (make test installs it as root)")
    assert render_ok(dest / "index.html").images == 66


def test_exports_over_s3(s3_run, tmp_path, capsys):
    from pycocotools.coco import COCO

    coco_path = tmp_path / "coco.json"
    command = ["export", "coco", "--output", OUT, "--run", s3_run, "--min-score", "0", "--dest", str(coco_path)]
    assert _camray(capsys, *command)[0] == 0  # every box: at least one an image
    coco = COCO(str(coco_path))
    names = sorted(image["file_name"] for image in coco.dataset["images"])
    assert len(names) == 11 and all(name.startswith(f"s3://{BUCKET}/images/") for name in names)
    assert len(coco.getAnnIds()) >= 11
    yolo = tmp_path / "yolo"
    assert _camray(capsys, "export", "yolo", "--output", OUT, "--dest", str(yolo))[0] == 0
    labels = sorted(path.name for path in (yolo / "labels").iterdir())
    assert labels == sorted(Path(name).stem + ".txt" for name in names)
    assert (yolo / "images.txt").read_text().splitlines() == names
