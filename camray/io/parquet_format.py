"""The plain Parquet format (`sink.format: parquet`, and every output written before Delta tables): a table is the
Parquet files under its folder, and its current rows are those of succeeded runs.

A table's files are found in one place, `table_files`: its Parquet files at any depth, hidden and underscore
entries left out (a staging folder, Spark's `_SUCCESS`). `runs/` files are each inspected and their schemas unified
with the current `RUNS` (a column a file lacks reads as null, one this version does not know is kept); `results/`
and `errors/` are large and read with the current schema unified with one file's, enough because their columns
only ever grow.

A run's write tasks stage their files under `_staging/<run_id>/`; its commit checks that no input appears twice,
moves the files into the tables, then the runner writes the runs row last: a row belongs to a completed run
exactly when its `run_id` has status `succeeded` in `runs/`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from camray.io.layout import (
    MIGRATED_PREFIX,
    PARQUET,
    ROW_TABLES,
    STAGING_FOLDER,
    SUCCEEDED,
    TABLES,
    check_table,
    run_file_prefix,
    runs_row_name,
)
from camray.io.run_keys import run_keys
from camray.io.table_format import RunRows, TableFormat, empty

logger = logging.getLogger(__name__)


def parquet_files(filesystem: pafs.FileSystem, folder: str, recursive: bool = True) -> list[str]:
    """The Parquet files under `folder` (none when it is absent), in path order, leaving out every hidden or
    underscore entry at any depth below it (temporary files, a staging or listing folder, Spark's `_SUCCESS`), and
    the files of a migration to Delta tables in progress, whose rows the table's own files hold already."""
    selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
    return sorted(
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not info.base_name.startswith(MIGRATED_PREFIX)
        and not any(part.startswith(("_", ".")) for part in info.path[len(folder) :].split("/"))
    )


class ParquetFormat(TableFormat):
    name = PARQUET

    def has_tables(self) -> bool:
        return self.store.info("runs").type == pafs.FileType.Directory

    def table_files(self, table: str) -> list[str]:
        """The files that make up `table`: the one place every reader learns which files a table has."""
        return parquet_files(self.store.fs, self.store.path(check_table(table)))

    def files(self, table: str, run_id: str | None = None) -> list[str]:
        return self.table_files(table)

    def dataset(self, table: str, current_columns_only: bool = False) -> pads.Dataset:
        """The whole table as a pyarrow dataset (empty, with the current schema, when it has no file).

        `current_columns_only` reads with the current schema as it is, without inspecting any file: enough for a
        reader of columns every version has, and one request per file fewer on `runs/`."""
        files = self.table_files(table)
        if not files:
            return pads.dataset(empty(table))
        factory = pads.FileSystemDatasetFactory(self.store.fs, files, pads.ParquetFileFormat())
        if current_columns_only:
            return factory.finish(TABLES[table])
        inspected = factory.inspect(fragments=None if table == "runs" else 1, promote_options="permissive")
        return factory.finish(pa.unify_schemas([TABLES[table], inspected], promote_options="permissive"))

    def schema(self, table: str) -> pa.Schema:
        return self.dataset(table).schema

    def succeeded_runs(self) -> pa.Table:
        """Read with the current schema as it is: one request per runs file fewer than `schema("runs")` takes."""
        runs = self.dataset("runs", current_columns_only=True).to_table(
            columns=["run_id", "started_at"], filter=pc.field("status") == SUCCEEDED
        )
        return runs.sort_by([("started_at", "descending"), ("run_id", "descending")])

    def current_filter(self, table: str) -> pads.Expression | None:
        if table == "runs":
            return None
        return pads.field("run_id").isin(self.succeeded_run_ids())

    def runs(self) -> pa.Table:
        return self.dataset("runs").to_table()

    # -------------------------------------------------------------------------------------------- a run's side

    def prepare(self) -> None:
        pass

    def staging_uri(self, table: str, run_id: str) -> str:
        return self.store.uri_of(STAGING_FOLDER, run_id, check_table(table))

    def _staged(self, run_id: str) -> dict[str, list[str]]:
        """The run's files per row table: staged ones, then those a commit that did not finish moved already."""
        found: dict[str, list[str]] = {}
        for table in ROW_TABLES:
            staged = self.store.files(f"{STAGING_FOLDER}/{run_id}/{table}")
            moved = self.store.files(table, run_file_prefix(run_id))
            found[table] = [item.path for item in staged if item.name.endswith(".parquet")]
            found[table] += [item.path for item in moved if item.name.endswith(".parquet")]
        return found

    def run_rows(self, run_id: str, columns: dict[str, list[str]]) -> Iterator[RunRows]:
        for table, paths in self._staged(run_id).items():
            for path in paths:
                staged = self.staged_rows(table, path, columns[table], TABLES[table])
                if staged is not None:
                    yield staged

    def commit(self, run_id: str, attempt: int) -> list[str]:
        staged = self._staged(run_id)
        with run_keys(run_id, self.run_rows(run_id, {table: ["image_uri"] for table in ROW_TABLES})):
            pass
        committed = []
        for table, paths in staged.items():
            if paths:
                self.store.fs.create_dir(self.store.path(table), recursive=True)
            for path in paths:
                name = path.rsplit("/", 1)[-1]
                target = self.store.path(table, name)
                if path != target:
                    self.store.fs.move(path, target)
                committed.append(f"{table}/{name}")
        self.discard_staging(run_id)
        return sorted(committed)

    def append_runs_row(self, row: dict) -> None:
        self.store.fs.create_dir(self.store.path("runs"), recursive=True)
        table = pa.Table.from_pylist([row], schema=TABLES["runs"])
        pq.write_table(
            table, self.store.path("runs", runs_row_name(row["run_id"], row["attempt"])), filesystem=self.store.fs
        )
