"""Outputs made by hand for the tests of their readers: Delta tables holding given rows, or a Parquet output."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from camray.io.layout import TABLES
from camray.io.output import Output
from camray.io.sources import S3Settings


def runs_row(run_id: str, status: str = "succeeded", hour: int = 1, **values) -> dict:
    """A runs row with every column null but these."""
    when = datetime(2026, 11, 25, hour, tzinfo=UTC)
    return dict.fromkeys(TABLES["runs"].names) | {
        "run_id": run_id,
        "status": status,
        "started_at": when,
        "finished_at": when,
        "attempt": 1,
        **values,
    }


def delta_output(
    uri: str,
    files: dict[str, list[pa.Table]],
    runs: list[dict],
    uncommitted: dict[str, list[pa.Table]] | None = None,
    s3: S3Settings | None = None,
) -> Output:
    """Delta tables at `uri` whose current rows are `files` (each table one commit of these files) and `runs`;
    `uncommitted` files lie in the table folders under a run's staged name, as a crashed run leaves them."""
    output = Output(uri, s3)
    output.format.prepare()
    store = output.store
    for table, tables in files.items():
        paths = []
        for index, rows in enumerate(tables):
            paths.append(store.path(table, f"fixture-{index:05d}.parquet"))
            pq.write_table(rows, paths[-1], filesystem=store.fs)
        output.format.add_files(table, paths, {"camray.fixture": True})
    for table, tables in (uncommitted or {}).items():
        for index, rows in enumerate(tables):
            pq.write_table(rows, store.path(table, f"crashed-run-a01-{index:05d}.parquet"), filesystem=store.fs)
    for row in runs:
        output.format.append_runs_row(row)
    output.refresh()
    return output


def parquet_output(root, files: dict[str, list[pa.Table]], runs: list[dict]) -> Output:
    """A Parquet output at the local folder `root`: the files as they are, each runs row a file of its own."""
    for table, tables in files.items():
        (root / table).mkdir(parents=True, exist_ok=True)
        for index, rows in enumerate(tables):
            pq.write_table(rows, root / table / f"fixture-{index:05d}.parquet")
    (root / "runs").mkdir(parents=True, exist_ok=True)
    for row in runs:
        pq.write_table(pa.Table.from_pylist([row], schema=TABLES["runs"]), root / "runs" / f"{row['run_id']}.parquet")
    output = Output(str(root))
    assert not output.is_delta
    return output
