"""The runs row: versions read from the package (or pyproject.toml), one file per attempt, in either format."""

from __future__ import annotations

import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from camray.config import load_config
from camray.io.output import Output
from camray.provenance import ClusterFacts, ModelFacts, RunSummary, applied_config, camray_version, runs_row

REPO = Path(__file__).resolve().parents[1]


def test_version_and_commit_of_this_checkout():
    version, commit = camray_version()
    assert version == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert commit == head.stdout.strip()


@pytest.mark.parametrize("table_format", ["delta", "parquet"])
def test_each_attempt_adds_its_own_runs_row(table_format, tmp_path):
    config = load_config(overrides={"sink.uri": str(tmp_path), "source.uri": "in", "sink.format": table_format})
    model = ModelFacts("bundled:lite0", "ab" * 32, 224)
    output = Output(str(tmp_path), new_format=table_format)
    output.format.prepare()
    for attempt, status in ((1, "interrupted"), (2, "succeeded")):
        summary = RunSummary("r", status, 10, 0, 9, 1, 5.0, str(tmp_path), (), attempt=attempt, processed=5)
        row = runs_row(config, summary, datetime.now(UTC), model, ClusterFacts(2, "H100"), io_retries=3)
        output.format.append_runs_row(row)
    assert sorted(path.name for path in (tmp_path / "runs").glob("*.parquet")) == ["r-a02.parquet", "r.parquet"]
    rows = Output(str(tmp_path)).runs().to_pylist()
    assert sorted((row["attempt"], row["status"]) for row in rows) == [(1, "interrupted"), (2, "succeeded")]
    assert {(row["weights_sha256"], row["nodes"], row["gpu_types"], row["io_retries"]) for row in rows} == {
        ("ab" * 32, 2, "H100", 3)
    }
    assert rows[0]["images_per_second"] == 1.0 and rows[0]["config_fingerprint"] == config.fingerprint()


@pytest.mark.parametrize(
    ("overrides", "source"),
    [
        ({}, "maps"),  # predicted classes of a softmax head: their maps' boxes
        ({"cam.classes": "given"}, "label_maps"),  # given classes under the CRF's label maps: their regions
        ({"cam.classes": "given", "masks.refine": "none"}, "maps"),
        ({"model.head": "sigmoid", "boxes.source": "maps"}, "maps"),
    ],
)
def test_the_runs_row_records_the_box_source_as_resolved(overrides, source, tmp_path):
    import json

    config = load_config(overrides={"sink.uri": str(tmp_path), "source.uri": "in", **overrides})
    assert config.boxes.source == overrides.get("boxes.source", "auto")
    summary = RunSummary("r", "succeeded", 1, 0, 1, 0, 1.0, str(tmp_path), ())
    row = runs_row(config, summary, datetime.now(UTC), None, ClusterFacts(1, ""), io_retries=0)
    recorded = json.loads(row["config_json"])
    assert recorded["boxes"]["source"] == source and recorded == applied_config(config)
    assert {key: value for key, value in recorded["boxes"].items() if key != "source"} == {
        key: value for key, value in config.boxes.model_dump(mode="json").items() if key != "source"
    }
