"""Reading a Parquet output's tables (outputs written before Delta tables): runs rows of every schema version
alike, and the newest row of each image among the succeeded runs' rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from camray.io import newest_rows
from camray.io.bounded_duckdb import bounded_duckdb
from camray.io.output import Output, OutputNotFound
from camray.io.schema import RESULTS, RUNS

# The runs columns of schema version 1, before the operator's columns were added.
RUNS_V1 = pa.schema([RUNS.field(name) for name in RUNS.names[: RUNS.names.index("schema_version") + 1]])


def _run_row(run_id: str, status: str, hour: int) -> dict:
    row = dict.fromkeys(RUNS_V1.names)
    when = datetime(2026, 11, 25, hour, tzinfo=UTC)
    row.update(run_id=run_id, status=status, started_at=when, finished_at=when, results=1, errors=0, seconds=2.0)
    return row


def _result(uri: str, run_id: str, label: str) -> dict:
    row = dict.fromkeys(RESULTS.names)
    row.update(
        image_uri=uri, run_id=run_id, width=10, height=10, predictions=[{"class_id": 1, "label": label, "score": 0.5}]
    )
    return row


@pytest.fixture
def output(tmp_path) -> Output:
    (tmp_path / "runs").mkdir()
    (tmp_path / "results").mkdir()
    # Schema 1, as the job wrote it before the operator's columns.
    v1 = RUNS_V1
    pq.write_table(pa.Table.from_pylist([_run_row("a", "succeeded", 1)], schema=v1), tmp_path / "runs" / "a.parquet")
    pq.write_table(pa.Table.from_pylist([_run_row("c", "failed", 3)], schema=v1), tmp_path / "runs" / "c.parquet")
    # A newer version's row: extra columns, one of them a type the reader has never seen.
    newer = pa.Table.from_pylist([_run_row("b", "succeeded", 2)], schema=v1)
    newer = newer.append_column("stats_uri", pa.array(["s3://x/stats/b.txt"]))
    newer = newer.append_column("accelerators", pa.array([["H100", "H100"]]))
    pq.write_table(newer, tmp_path / "runs" / "b.parquet")
    rows = [_result("img/1.png", "a", "old"), _result("img/2.png", "a", "only-a"), _result("img/1.png", "b", "new")]
    rows.append(_result("img/1.png", "c", "failed-run"))
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULTS), tmp_path / "results" / "part.parquet")
    return Output(str(tmp_path))


def test_runs_of_every_version_newest_first(output):
    runs = output.runs().to_pylist()
    assert [run["run_id"] for run in runs] == ["c", "b", "a"]
    assert runs[1]["stats_uri"] == "s3://x/stats/b.txt" and runs[1]["accelerators"] == ["H100", "H100"]
    assert runs[2]["stats_uri"] is None and runs[2]["accelerators"] is None
    assert sorted(output.succeeded_run_ids()) == ["a", "b"]
    assert output.pick_run(None)["run_id"] == "b"  # the newest succeeded, not the newest
    assert output.pick_run("c")["status"] == "failed"
    with pytest.raises(LookupError, match="camray runs --output"):
        output.pick_run("zzz")


def test_latest_results_takes_each_image_from_its_newest_succeeded_run(output):
    latest = output.latest_results(None, ["image_uri", "predictions"]).to_pylist()
    # In the order written: img/1.png's row of run a, which run b replaced, came first.
    assert [(row["image_uri"], row["predictions"][0]["label"]) for row in latest] == [
        ("img/2.png", "only-a"),
        ("img/1.png", "new"),
    ]
    assert output.latest_results("c").column("run_id").to_pylist() == ["c"]


def test_many_rewritten_images_are_told_apart_by_duckdb_with_the_same_rows(output, monkeypatch):
    in_python = output.latest_results(None)
    monkeypatch.setattr(newest_rows, "REWRITTEN_IN_MEMORY", 0)
    by_duckdb = output.latest_results(None)
    assert by_duckdb.equals(in_python) and by_duckdb.num_rows == 2


def test_missing_output_is_named(tmp_path):
    with pytest.raises(OutputNotFound, match="no runs table"):
        Output(str(tmp_path / "nothing")).check_exists()
    assert Output(str(tmp_path / "nothing")).scan("results").read_all().schema.names == RESULTS.names


def test_newest_row_follows_run_order_not_run_ids_and_keeps_the_schema(output, tmp_path):
    # An older succeeded run whose id sorts after every other: the largest id is not the newest run.
    pq.write_table(
        pa.Table.from_pylist([_run_row("zz", "succeeded", 0)], schema=RUNS_V1), tmp_path / "runs" / "zz.parquet"
    )
    rows = [_result("img/2.png", "zz", "older-than-a"), _result("img/3.png", "zz", "only-zz")]
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULTS), tmp_path / "results" / "zz.parquet")
    assert output.succeeded_run_ids() == ["b", "a", "zz"]
    latest = output.latest_results(None)
    assert latest.schema.names == RESULTS.names and latest.schema.equals(RESULTS, check_metadata=False)
    labels = {row["image_uri"]: (row["run_id"], row["predictions"][0]["label"]) for row in latest.to_pylist()}
    assert labels == {"img/1.png": ("b", "new"), "img/2.png": ("a", "only-a"), "img/3.png": ("zz", "only-zz")}


def test_the_newest_row_query_keeps_to_its_memory_limit_and_spills_to_a_removed_folder():
    with bounded_duckdb("32MB") as con:
        limit, spill = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchone()
        assert limit == "30.5 MiB" and Path(spill).is_dir()
        # The newest-row query's shape over ~150 MB of rows: within 32 MB only if DuckDB spills.
        newest = """
            SELECT count(*), sum(i) FROM (
                SELECT * FROM (SELECT i % 500000 AS k, i, md5(i::VARCHAR) || md5(i::VARCHAR) AS h
                               FROM range(2000000) t(i))
                QUALIFY row_number() OVER (PARTITION BY k ORDER BY i DESC) = 1
            )"""
        assert con.execute(newest).fetchone() == (500_000, sum(range(1_500_000, 2_000_000)))
    assert not Path(spill).exists()


def test_query_reads_results_files_of_every_schema_alike_and_only_succeeded_runs(output, tmp_path):
    from camray.outputs.query import connect

    # A results file as an older camray wrote it: no `content_sha256` column, and its columns in another order.
    older = [name for name in reversed(RESULTS.names) if name != "content_sha256"]
    rows = [_result("img/old.png", "a", "older-camray")]
    rows[0]["content_sha256"] = "never written"
    table = pa.Table.from_pylist(rows, schema=RESULTS).select(older)
    pq.write_table(table, tmp_path / "results" / "older.parquet")
    con = connect(output)
    assert [column[0] for column in con.execute("DESCRIBE results").fetchall()] == RESULTS.names
    found = con.execute("SELECT image_uri, run_id, content_sha256 FROM results ORDER BY image_uri, run_id").fetchall()
    # the newer files' rows have a null digest too (the fixture leaves it null); the older file has no such column
    assert found == [
        ("img/1.png", "a", None),
        ("img/1.png", "b", None),
        ("img/2.png", "a", None),
        ("img/old.png", "a", None),
    ]
    labels = con.execute("SELECT label FROM predictions WHERE image_uri = 'img/old.png'").fetchall()
    assert labels == [("older-camray",)]
    every = connect(output, all_runs=True).execute("SELECT count(*) FROM results WHERE run_id = 'c'").fetchall()
    assert every == [(1,)]
