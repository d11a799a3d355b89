"""`camray migrate`: a Parquet output as Delta tables equal to its source (the current rows are the newest row per
image of succeeded runs), in place and beside it on the S3 server; a migration that died is started over."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from outputs_made import runs_row
from readers import delta_rows

from camray.io import migrate as migrate_module
from camray.io.migrate import migrate
from camray.io.output import Output, UnfinishedMigration
from camray.io.schema import ERRORS, RESULTS, RUNS
from camray.io.sources import S3Settings

pytestmark = pytest.mark.integration

# What three runs wrote, each in files named as the sink names them: (run, table, [(image, version, label)]).
WRITTEN = [
    ("r1", "results", [("a.jpg", "v1", "cat"), ("b.jpg", "v1", "dog")]),
    ("r1", "results", [("shard.tar#0", "v1", "cat")]),
    ("r1", "errors", [("c.jpg", "v1", None), ("shard.tar", "v1", None)]),
    ("r2", "results", [("b.jpg", "v2", "wolf"), ("c.jpg", "v1", "fox")]),
    ("r2", "results", [("shard.tar#1", "v1", "owl")]),
    ("r2", "errors", [("d.jpg", "v1", None)]),
    ("r3", "results", [("a.jpg", "v9", "never committed")]),
]


def _table(table: str, run_id: str, rows: list[tuple[str, str, str | None]], older: bool) -> pa.Table:
    schema = RESULTS if table == "results" else ERRORS
    records = []
    for uri, version, label in rows:
        record = dict.fromkeys(schema.names) | {"image_uri": uri, "source_version": version, "run_id": run_id}
        record["container_uri"] = uri.split("#")[0] if "#" in uri or uri.endswith(".tar") else None
        if table == "results":
            record["predictions"] = [{"class_id": 1, "label": label, "score": 0.5}]
        else:
            record.update(stage="decode", error_type="E", message="bad")
        records.append(record)
    made = pa.Table.from_pylist(records, schema=schema)
    if older:  # as schema version 2 wrote it: no labels, no container
        made = made.drop_columns([name for name in ("labels", "container_uri") if name in made.column_names])
    return made


def _parquet_output(root) -> None:
    for index, (run_id, table, rows) in enumerate(WRITTEN):
        (root / table).mkdir(parents=True, exist_ok=True)
        older = index == 0
        pq.write_table(_table(table, run_id, rows, older), root / table / f"{run_id}-a01-{index:05d}.parquet")
    (root / "runs").mkdir(parents=True, exist_ok=True)
    for hour, (run_id, status) in enumerate((("r1", "succeeded"), ("r2", "succeeded"), ("r3", "failed")), start=1):
        pq.write_table(
            pa.Table.from_pylist([runs_row(run_id, status, hour)], schema=RUNS), root / "runs" / f"{run_id}.parquet"
        )
    staged = root / "_staging" / "r4" / "results"  # an unfinished run's staged file, kept for its resume
    staged.mkdir(parents=True)
    pq.write_table(_table("results", "r4", [("e.jpg", "v1", "kept")], False), staged / "r4-a01-00000.parquet")


def _pairs(rows) -> list[tuple[str, str]]:
    return sorted((row["image_uri"], row["run_id"]) for row in rows)


EXPECTED_RESULTS = [("a.jpg", "r1"), ("b.jpg", "r2"), ("c.jpg", "r2"), ("shard.tar#0", "r1"), ("shard.tar#1", "r2")]
# c.jpg's error is r1's, and r2 wrote its result since; the shard's own error is r1's, and r2 read the shard again.
EXPECTED_ERRORS = [("d.jpg", "r2")]


def test_a_migrated_output_equals_its_source_in_place_and_beside(s3_server, tmp_path, monkeypatch):
    import boto3

    source = tmp_path / "out"
    _parquet_output(source)
    parquet = Output(str(source))
    newest = _pairs(parquet.latest_results(None, ["image_uri", "run_id"]).to_pylist())
    assert newest == EXPECTED_RESULTS  # the Parquet readers' own rule, before the migration

    boto3.client("s3").create_bucket(Bucket="camray-migrated")
    beside = Output("s3://camray-migrated/out", S3Settings(s3_server))
    report = migrate(parquet, beside)
    assert (report.files_rewritten["results"], report.files_left_out["results"]) == (1, 1)  # r1's first; r3's
    # A migration that dies before its runs table is started over by the next; readers meanwhile say so.
    creating = migrate_module._create

    def dies_before_the_runs(delta, table):
        if table == "runs":
            raise RuntimeError("the migration died here")
        creating(delta, table)

    monkeypatch.setattr(migrate_module, "_create", dies_before_the_runs)
    with pytest.raises(RuntimeError, match="died"):
        migrate(Output(str(source)))
    with pytest.raises(UnfinishedMigration, match="camray migrate --output"):
        Output(str(source)).check_exists()
    monkeypatch.undo()
    migrate(Output(str(source)))
    assert (source / "results" / "_delta_log").is_dir() and (source / "runs" / "_delta_log").is_dir()

    for migrated in (str(source), "s3://camray-migrated/out"):
        results = delta_rows(migrated, "results", ["image_uri", "run_id", "predictions"])
        assert _pairs(results.to_pylist()) == EXPECTED_RESULTS, migrated
        assert _pairs(delta_rows(migrated, "errors", ["image_uri", "run_id"]).to_pylist()) == EXPECTED_ERRORS
        assert sorted(row["run_id"] for row in delta_rows(migrated, "runs", ["run_id"]).to_pylist()) == [
            "r1",
            "r2",
            "r3",
        ]
        labels = {row["image_uri"]: row["predictions"][0]["label"] for row in results.to_pylist()}
        assert labels["b.jpg"] == "wolf" and labels["a.jpg"] == "cat"
    # The output reads as Delta tables now, through camray's own readers too, and the unfinished run's staged file
    # waits where a Delta run resuming it looks.
    migrated = Output(str(source))
    assert migrated.is_delta and _pairs(migrated.latest_results(None, ["image_uri", "run_id"]).to_pylist()) == newest
    assert (source / "results" / "r4-a01-00000.parquet").exists()
    with pytest.raises(Exception, match="Delta tables already"):
        migrate(migrated)
