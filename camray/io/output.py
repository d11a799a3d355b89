"""The output: one object built once per run or tool, owning its store, layout, format, lease and readers.

`Output(uri, s3)` resolves the store once (`camray.io.store`); its format is found once, from what the output
holds: Delta tables (a `runs/_delta_log/`), plain Parquet (an output written before Delta tables, or by
`sink.format: parquet`), or nothing yet (a new output, made in `new_format`). A run works on it through
`camray.io.output_run.OutputRun`, which takes its lease, stages, commits and writes the runs row; the users' tools
read it through the readers below, which see the same current rows whatever the format.

The current rows are what every reader sees: a Delta table's current version (one row per image, the latest run's),
or a Parquet output's rows of succeeded runs. `iter_latest_results` gives one row per image in both: the current
version of a Delta table as it is, the newest row of each image in a Parquet output (`camray.io.newest_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property

import pyarrow as pa
import pyarrow.dataset as pads

from camray.errors import RunNotFound, SetupError
from camray.io.delta_format import DeltaFormat
from camray.io.layout import DELTA, FORMATS, ROW_TABLES, STAGING_FOLDER, SUCCEEDED, TABLES
from camray.io.lease import OutputLease
from camray.io.parquet_format import ParquetFormat
from camray.io.sources import S3Settings, store_errors
from camray.io.store import Store
from camray.io.table_format import TableFormat

# DuckDB's working memory for the tools' set operations; beyond it DuckDB spills to a temporary folder.
DUCKDB_MEMORY_LIMIT = "64MB"


class OutputNotFound(FileNotFoundError):
    """The output URI holds no camray tables."""


class UnfinishedMigration(SetupError):
    """`camray migrate` left the output half converted: its row tables are Delta tables, its runs not yet."""


class Output:
    """An output location, its store resolved once, its format found once."""

    def __init__(self, uri: str, s3: S3Settings | None = None, new_format: str = DELTA) -> None:
        if new_format not in FORMATS:
            raise ValueError(f"`new_format` must be one of {FORMATS}, not {new_format!r}")
        self.store = Store(uri, s3 or S3Settings())
        self.new_format = new_format

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def s3(self) -> S3Settings:
        return self.store.s3

    def __repr__(self) -> str:
        return f"Output({self.uri!r})"

    @cached_property
    def format(self) -> TableFormat:
        """The format of what the output holds, or `new_format` for a new output (see the module docstring)."""
        with store_errors("reading of", self.uri, self.s3):
            delta = DeltaFormat(self.store)
            if delta.exists("runs"):
                return delta
            if any(delta.exists(table) for table in ROW_TABLES):
                raise UnfinishedMigration(
                    f"{self.uri} is half converted to Delta tables (its runs table is not yet): run "
                    f"`camray migrate --output {self.uri}` again to finish"
                )
            parquet = ParquetFormat(self.store)
            if self.new_format == DELTA and not self._holds_parquet():
                return delta
            return parquet

    def _holds_parquet(self) -> bool:
        """Any table folder, or a run's staged Parquet files (a first run that crashed before its commit)."""
        if any(self.store.is_folder(table) for table in TABLES):
            return True
        return any(
            self.store.is_folder(STAGING_FOLDER, run.rsplit("/", 1)[-1], table)
            for run in self._staging_runs()
            for table in ROW_TABLES
        )

    def _staging_runs(self) -> list[str]:
        import pyarrow.fs as pafs

        if not self.store.is_s3 and self.store.info(STAGING_FOLDER).type != pafs.FileType.Directory:
            return []
        selector = pafs.FileSelector(self.store.path(STAGING_FOLDER), allow_not_found=True)
        return [info.path for info in self.store.fs.get_file_info(selector) if info.type == pafs.FileType.Directory]

    @property
    def is_delta(self) -> bool:
        return isinstance(self.format, DeltaFormat)

    def refresh(self) -> None:
        """Reads the tables' state again: another run may have committed since it was first read."""
        if "format" in self.__dict__:
            self.format.refresh()

    def lease(self, run_id: str, seconds: float) -> OutputLease:
        return OutputLease(self.uri, run_id, self.s3, seconds)

    # -------------------------------------------------------------------------------------------------- readers

    def check_exists(self) -> None:
        if not self.format.has_tables():
            raise OutputNotFound(f"{self.uri} has no runs table: not a camray output, or no job has finished there")

    def files(self, table: str, run_id: str | None = None) -> list[str]:
        """The files holding `table`'s current rows, as paths on `store.fs`."""
        return self.format.files(table, run_id)

    def schema(self, table: str) -> pa.Schema:
        return self.format.schema(table)

    def scan(
        self,
        table: str,
        columns: list[str] | None = None,
        row_filter: pads.Expression | None = None,
        *,
        all_rows: bool = False,
        run_id: str | None = None,
    ) -> pa.RecordBatchReader:
        """`table`'s current rows (`TableFormat.scan`), streamed a few files and a batch at a time."""
        return self.format.scan(table, columns, row_filter, all_rows=all_rows, run_id=run_id)

    def runs(self) -> pa.Table:
        """Every run attempt's row, newest first."""
        table = self.format.runs()
        if table.num_rows == 0:
            return table
        return table.sort_by([("started_at", "descending"), ("run_id", "descending")])

    def succeeded_runs(self) -> pa.Table:
        """`run_id` and `started_at` of every succeeded run, newest first: the run order in which a later run's row
        of an image replaces an earlier one's. A run succeeds once, so each id appears once."""
        return self.format.succeeded_runs()

    def succeeded_run_ids(self) -> list[str]:
        return self.succeeded_runs().column("run_id").to_pylist()

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
        return next((run for run in runs if run["status"] == SUCCEEDED), runs[0])

    def table(
        self,
        table: str,
        run_ids: Sequence[str] | None,
        columns: list[str] | None = None,
        extra_filter: pads.Expression | None = None,
    ) -> pa.Table:
        """Rows of `table` of `run_ids` (all runs when None), the filter pushed down to the Parquet scan; one run's
        rows in memory, for the tools that show a run. A Delta table's are its current rows; a Parquet output's
        every row of those runs, succeeded or not (a failed run's report shows what it left)."""
        expression = None if run_ids is None else pads.field("run_id").isin(list(run_ids))
        if extra_filter is not None:
            expression = extra_filter if expression is None else expression & extra_filter
        single = run_ids[0] if run_ids is not None and len(run_ids) == 1 else None
        schema = _selected(self.schema(table), columns)
        return self.scan(table, schema.names, expression, all_rows=True, run_id=single).read_all()

    def latest_results(self, run_id: str | None, columns: list[str] | None = None) -> pa.Table:
        """`iter_latest_results` as one table, for small readers."""
        batches = list(self.iter_latest_results(run_id, columns))
        return pa.Table.from_batches(batches, schema=_selected(self.schema("results"), columns))

    def iter_latest_results(
        self,
        run_id: str | None,
        columns: list[str] | None = None,
        batch_rows: int = 1024,
        memory_limit: str = DUCKDB_MEMORY_LIMIT,
    ) -> Iterator[pa.RecordBatch]:
        """The results of one run (`table`'s rows of it), or, without a run, one row of every image (the module's
        docstring), as record batches of at most `batch_rows` rows in run order. A reader holds one batch, not the
        history."""
        schema = _selected(self.schema("results"), columns)
        if run_id is not None or not isinstance(self.format, ParquetFormat):
            rows = self.scan("results", schema.names, all_rows=True, run_id=run_id)
            yield from _rebatched((batch.cast(schema) for batch in rows), batch_rows)
            return
        from camray.io.newest_rows import newest_rows

        run_order = self.succeeded_runs().column("run_id").combine_chunks()
        yield from _rebatched(newest_rows(self.format, run_order, schema, memory_limit), batch_rows)


def _selected(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    """The schema, or its fields named by `columns`, in that order."""
    return schema if columns is None else pa.schema([schema.field(name) for name in columns])


def _rebatched(batches: Iterable[pa.RecordBatch], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches' rows in batches of at most `batch_rows`."""
    for batch in batches:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)
