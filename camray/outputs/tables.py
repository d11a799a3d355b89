"""Reading an output's tables (`results/`, `errors/`, `runs/`), local or `s3://`, for the users' tools.

Where the tables live and how their schemas are merged is `camray.io.layout`'s. This module adds what the
tools share on top: picking a run, and the newest row of each image.

The newest row of each image is one rule for every reader (exports, report, evaluator): among the rows of
succeeded runs, the row of the run that comes last in run order (`started_at`, then `run_id`). DuckDB computes
it over the pyarrow dataset (`QUALIFY row_number() OVER (...) = 1`), within `DUCKDB_MEMORY_LIMIT` and spilling
to a temporary folder beyond it, so the history's size does not decide the memory it takes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads

from camray.errors import RunNotFound
from camray.io import layout
from camray.io.sources import S3Settings

# DuckDB's working memory for the tools' set operations; beyond it DuckDB spills to a temporary folder.
DUCKDB_MEMORY_LIMIT = "1GB"


class OutputNotFound(FileNotFoundError):
    """The output URI holds no camray tables."""


@contextmanager
def bounded_duckdb(memory_limit: str = DUCKDB_MEMORY_LIMIT) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection that keeps to `memory_limit` and spills to a temporary folder removed after."""
    with tempfile.TemporaryDirectory(prefix="camray-duckdb-") as spill:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill})
        try:
            yield con
        finally:
            con.close()


@dataclass(frozen=True)
class Output:
    """An output location and how to reach it."""

    uri: str
    s3: S3Settings = S3Settings()

    def dataset(self, table: str) -> pads.Dataset:
        """The whole table as a pyarrow dataset (empty, with the current schema, when the folder is absent)."""
        return layout.table_dataset(self.uri, table, self.s3)

    def check_exists(self) -> None:
        if not layout.has_runs(self.uri, self.s3):
            raise OutputNotFound(f"{self.uri} has no runs/ table: not a camray output, or no job has finished there")

    def runs(self) -> pa.Table:
        """Every run, newest first."""
        table = self.dataset("runs").to_table()
        if table.num_rows == 0:
            return table
        return table.sort_by([("started_at", "descending"), ("run_id", "descending")])

    def succeeded_run_ids(self) -> list[str]:
        """Succeeded runs, newest first."""
        return layout.succeeded_run_ids(self.uri, self.s3)

    def pick_run(self, run_id: str | None) -> dict:
        """The named run, or the newest succeeded one, or (none succeeded) the newest of any status."""
        self.check_exists()
        runs = self.runs().to_pylist()
        if run_id is not None:
            for run in runs:
                if run["run_id"] == run_id:
                    return run
            raise RunNotFound(f"run {run_id!r} is not in {self.uri}/runs; `camray runs --output {self.uri}` lists them")
        if not runs:
            raise OutputNotFound(f"{self.uri}/runs holds no run")
        return next((run for run in runs if run["status"] == layout.SUCCEEDED), runs[0])

    def table(
        self,
        table: str,
        run_ids: Sequence[str] | None,
        columns: list[str] | None = None,
        extra_filter: pads.Expression | None = None,
    ) -> pa.Table:
        """Rows of `table` from `run_ids` (all runs when None), the filter pushed down to the Parquet scan."""
        expression = None if run_ids is None else pads.field("run_id").isin(list(run_ids))
        if extra_filter is not None:
            expression = extra_filter if expression is None else expression & extra_filter
        return self.dataset(table).to_table(columns=columns, filter=expression)

    def latest_results(self, run_id: str | None, columns: list[str] | None = None) -> pa.Table:
        """Results of one run, or, without a run, the newest row of every image across succeeded runs
        (non-incremental reruns write an image again), ordered by `image_uri`; the whole table, for small readers."""
        wanted = self.dataset("results").schema.names if columns is None else columns
        batches = list(self.iter_latest_results(run_id, columns))
        schema = pa.schema([self.dataset("results").schema.field(name) for name in wanted])
        return pa.Table.from_batches(batches, schema=schema)

    def iter_latest_results(
        self,
        run_id: str | None,
        columns: list[str] | None = None,
        batch_rows: int = 1024,
        memory_limit: str = DUCKDB_MEMORY_LIMIT,
    ) -> Iterator[pa.RecordBatch]:
        """`latest_results` as record batches of at most `batch_rows` rows, streamed from DuckDB (which sorts
        within `memory_limit`, spilling beyond it), so a reader holds one batch, not the history."""
        dataset = self.dataset("results")
        wanted = dataset.schema.names if columns is None else columns
        schema = pa.schema([dataset.schema.field(name) for name in wanted])
        selected = ", ".join(f'r."{name}"' for name in wanted)
        with bounded_duckdb(memory_limit) as con:
            if run_id is not None:
                con.register("run_rows", dataset.filter(pads.field("run_id") == run_id))
                query = f"SELECT {selected} FROM run_rows r ORDER BY r.image_uri"
            else:
                succeeded = layout.succeeded_runs(self.uri, self.s3)
                ordered = succeeded.append_column("run_order", pa.array(range(succeeded.num_rows), pa.int64()))
                con.register("succeeded_rows", dataset.filter(pads.field("run_id").isin(succeeded.column("run_id"))))
                con.register("run_order", ordered.select(["run_id", "run_order"]))
                query = f"""
                    SELECT {selected}
                    FROM succeeded_rows r JOIN run_order o USING (run_id)
                    QUALIFY row_number() OVER (PARTITION BY r.image_uri ORDER BY o.run_order) = 1
                    ORDER BY r.image_uri
                    """
            reader = con.sql(query).to_arrow_reader(batch_rows)
            for batch in reader:
                # DuckDB's Arrow types may differ in details (list field names, string kinds): back to the table's own.
                yield batch.cast(schema)
