"""The output's layout: where an attempt's files go, and a Parquet output's succeeded runs in run order and table
files, read alike by the runner and the users' tools."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from camray.io import layout
from camray.io.output import Output
from camray.io.schema import RUNS


def _runs_file(out, run_id: str, status: str, hour: int, **extra) -> None:
    row = dict.fromkeys(RUNS.names) | {"run_id": run_id, "status": status}
    row["started_at"] = datetime(2026, 11, 25, hour, tzinfo=UTC)
    table = pa.Table.from_pylist([row], schema=RUNS)
    for name, value in extra.items():
        table = table.append_column(name, pa.array([value]))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "runs" / layout.runs_row_name(run_id, 1))


def test_succeeded_runs_newest_first_whatever_columns_other_versions_added(tmp_path):
    _runs_file(tmp_path, "b", "succeeded", 2, zones=["eu-west-1a"])
    _runs_file(tmp_path, "a", "succeeded", 3, zones=7)  # a later version typed it otherwise
    _runs_file(tmp_path, "z", "succeeded", 1)
    _runs_file(tmp_path, "c", "failed", 4)
    _runs_file(tmp_path, "y", "succeeded", 2)  # started with `b`: the larger id is the later run
    assert Output(str(tmp_path)).succeeded_run_ids() == ["a", "y", "b", "z"]
    # Reading every column has to reconcile the two `zones`, and cannot: the runner never needs to.
    with pytest.raises(pa.ArrowTypeError):
        Output(str(tmp_path)).runs()
    assert Output(str(tmp_path / "absent")).succeeded_run_ids() == []


def test_every_attempt_writes_under_its_own_names_in_underscore_folders():
    out = "s3://bucket/cam"
    first = [layout.listing_uri(out, "r", 1), layout.stats_uri(out, "r", 1), layout.runs_row_name("r", 1)]
    second = [layout.listing_uri(out, "r", 2), layout.stats_uri(out, "r", 2), layout.runs_row_name("r", 2)]
    assert not set(first) & set(second)
    assert layout.staged_file_name("r", 1, 7) != layout.staged_file_name("r", 2, 7)
    hidden = [layout.lease_uri(out), layout.staging_uri(out, "r"), layout.state_uri(out, "r"), *first[:2]]
    assert all(uri.removeprefix(f"{out}/").startswith("_") for uri in hidden)
    assert {layout.table_uri(out, name).rsplit("/", 1)[-1] for name in layout.TABLES} == {"results", "errors", "runs"}
    with pytest.raises(ValueError, match="must be one of"):
        layout.table_uri(out, "_staging")


def test_every_reader_finds_a_tables_files_alike(tmp_path):
    """In a Parquet output, skip-done, resume, the tools and `camray query` read the files `table_files` finds:
    Parquet at any depth; not a README dropped beside them, Spark's `_SUCCESS`, an `_index/` folder, a hidden
    temporary file, or the file of a migration to Delta tables in progress."""
    from camray.io.done import DoneSet
    from camray.io.schema import RESULTS
    from camray.outputs.query import connect

    _runs_file(tmp_path, "run-a", "succeeded", 1)
    results = tmp_path / "results"
    (results / "2025").mkdir(parents=True)
    (results / "_index").mkdir()
    row = dict.fromkeys(RESULTS.names) | {"run_id": "run-a", "image_uri": "a.jpg", "source_version": "1-1"}
    written = ("run-a-a01-00000.parquet", "2025/part-0.parquet", "_index/x.parquet", ".run-a-a01-00001.parquet")
    for path in (*written, "migrated-00000.parquet"):
        pq.write_table(pa.Table.from_pylist([row], schema=RESULTS), results / path)
    (results / "README.md").write_text("rows of the nightly job\n")
    (results / "_SUCCESS").write_bytes(b"")

    output = Output(str(tmp_path))
    files = output.format.table_files("results")
    assert files == [str(results / "2025" / "part-0.parquet"), str(results / "run-a-a01-00000.parquet")]
    assert DoneSet.of(output, "m", "f").files == output.files("results") == files
    columns = {"results": ["image_uri"], "errors": ["image_uri"]}
    assert [part.rows.num_rows for part in output.format.run_rows("run-a", columns)] == [1]
    connection = connect(str(tmp_path))
    try:
        assert connection.execute("SELECT count(*) FROM results").fetchone() == (2,)
    finally:
        connection.close()
