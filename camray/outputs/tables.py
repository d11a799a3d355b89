"""Reading an output's tables (`results/`, `errors/`, `runs/`), local or `s3://`, for the users' tools.

Where the tables live and how their schemas are merged is `camray.io.layout`'s. This module adds what the
tools share on top: picking a run, and the newest row of each image.

The newest row of each image is one rule for every reader (exports, report, evaluator): among the rows of
succeeded runs, the row of the run that comes last in run order (`started_at`, then `run_id`). It is found in
two streamed passes over `results/`, with DuckDB keeping to `DUCKDB_MEMORY_LIMIT` and spilling to a temporary
folder beyond it, so the history's size does not decide the memory it takes:
1. over `image_uri` and `run_id` alone, DuckDB groups the rows by image and keeps the images written by more than
   one succeeded run, with the newest of those runs (a spilling hash aggregate; most images have one row);
2. over the columns asked for, each row is kept unless its image is among those and its run is not the newest;
   in Python, batch by batch, when at most `REWRITTEN_IN_MEMORY` images were rewritten, else by a DuckDB join.
The rows come in the order of the files that hold them (their names start with the run's id, which starts with
its UTC start time) and, within a file, as written. A sort of the history by image would take memory or disk in
proportion to the history; this order also keeps the earlier images first as the output grows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from camray.errors import RunNotFound
from camray.io import layout
from camray.io.bounded_duckdb import bounded_duckdb
from camray.io.sources import S3Settings

# DuckDB's working memory for the tools' set operations; beyond it DuckDB spills to a temporary folder.
DUCKDB_MEMORY_LIMIT = "64MB"
# Images written by more than one succeeded run, up to which the newest rows are told apart in Python (about
# 60 bytes an image); beyond it a DuckDB join, spilling, does it.
REWRITTEN_IN_MEMORY = 250_000


class OutputNotFound(FileNotFoundError):
    """The output URI holds no camray tables."""


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
        """Rows of `table` from `run_ids` (all runs when None), the filter pushed down to the Parquet scan; one
        run's rows in memory, for the tools that show a run."""
        dataset = self.dataset(table)
        expression = None if run_ids is None else pads.field("run_id").isin(list(run_ids))
        if extra_filter is not None:
            expression = extra_filter if expression is None else expression & extra_filter
        return layout.stream_table(dataset, _selected_schema(dataset, columns).names, expression).read_all()

    def latest_results(self, run_id: str | None, columns: list[str] | None = None) -> pa.Table:
        """`iter_latest_results` as one table, for small readers."""
        dataset = self.dataset("results")
        batches = list(self._latest_batches(dataset, run_id, columns))
        return pa.Table.from_batches(batches, schema=_selected_schema(dataset, columns))

    def iter_latest_results(
        self,
        run_id: str | None,
        columns: list[str] | None = None,
        batch_rows: int = 1024,
        memory_limit: str = DUCKDB_MEMORY_LIMIT,
    ) -> Iterator[pa.RecordBatch]:
        """The results of one run, or, without a run, the newest row of every image across succeeded runs (the
        module's docstring), as record batches of at most `batch_rows` rows in the order the runs wrote them.
        A reader holds one batch, not the history."""
        yield from self._latest_batches(self.dataset("results"), run_id, columns, batch_rows, memory_limit)

    def _latest_batches(
        self,
        dataset: pads.Dataset,
        run_id: str | None,
        columns: list[str] | None,
        batch_rows: int = 1024,
        memory_limit: str = DUCKDB_MEMORY_LIMIT,
    ) -> Iterator[pa.RecordBatch]:
        schema = _selected_schema(dataset, columns)
        wanted = schema.names
        if run_id is not None:
            yield from _rebatched(layout.stream_table(dataset, wanted, pads.field("run_id") == run_id), batch_rows)
            return
        succeeded = layout.succeeded_runs(self.uri, self.s3).column("run_id")
        of_succeeded = pads.field("run_id").isin(succeeded)
        read = list(dict.fromkeys([*wanted, "image_uri", "run_id"]))
        rows = _with_run_order(layout.stream_table(dataset, read, of_succeeded), succeeded)
        # One thread: it keeps the rows in the stream's order, the aggregate keeps to the limit (more threads each
        # take a share of it), and the passes are bound by reading the files and by the reader's Python anyway.
        with bounded_duckdb(memory_limit, threads=1) as con:
            keys = layout.stream_table(dataset, ["image_uri", "run_id"], of_succeeded)
            con.register("result_keys", _with_run_order(keys, succeeded))
            con.execute(
                """
                CREATE TEMP TABLE rewritten AS
                SELECT image_uri, min(run_order) AS newest FROM result_keys GROUP BY image_uri HAVING count(*) > 1
                """
            )
            con.unregister("result_keys")
            ((count,),) = con.execute("SELECT count(*) FROM rewritten").fetchall()
            if count > REWRITTEN_IN_MEMORY:
                con.register("result_rows", rows)
                selected = ", ".join(f'r."{name}"' for name in wanted)
                query = f"""
                    SELECT {selected} FROM result_rows r LEFT JOIN rewritten w ON w.image_uri = r.image_uri
                    WHERE w.image_uri IS NULL OR w.newest = r.run_order
                    """
                for batch in con.sql(query).to_arrow_reader(batch_rows):
                    # DuckDB's Arrow types may differ in details (list field names, string kinds): the table's own.
                    yield batch.cast(schema)
                return
            rewritten = con.sql("SELECT image_uri, newest FROM rewritten").to_arrow_table()
        # Few images rewritten (the usual history): the rows are filtered here, and DuckDB's memory is given back.
        uris, newest = (rewritten.column(name).combine_chunks() for name in ("image_uri", "newest"))

        def newest_rows() -> Iterator[pa.RecordBatch]:
            for batch in rows:
                if len(uris):
                    position = pc.index_in(batch.column("image_uri"), value_set=uris)
                    is_newest = pc.equal(pc.take(newest, position), batch.column("run_order"))
                    batch = batch.filter(pc.or_kleene(pc.is_null(position), is_newest))
                yield batch.select(wanted).cast(schema)

        yield from _rebatched(newest_rows(), batch_rows)


def _with_run_order(reader: pa.RecordBatchReader, newest_first: pa.Array) -> pa.RecordBatchReader:
    """The stream with `run_order`: the position of each row's `run_id` in `newest_first` (0 is the newest run).
    Added to the stream, not joined in DuckDB, which cannot size an Arrow stream and would build its hash table
    from the history rather than from the few runs."""
    schema = reader.schema.append(pa.field("run_order", pa.int32()))

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            order = pc.index_in(batch.column("run_id"), value_set=newest_first)
            yield pa.RecordBatch.from_arrays([*batch.columns, order], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def _selected_schema(dataset: pads.Dataset, columns: list[str] | None) -> pa.Schema:
    """The dataset's schema, or its fields named by `columns`, in that order."""
    return dataset.schema if columns is None else pa.schema([dataset.schema.field(name) for name in columns])


def _rebatched(batches: Iterable[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches' rows in batches of at most `batch_rows`."""
    for batch in batches:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)
