"""What an output's tables do, whatever their format: the readers' side (which files hold the current rows, read
with which schema) and a run's side (where its write tasks put their files, its rows read back, its commit, its
runs row). `camray.io.delta_format` and `camray.io.parquet_format` are the two formats.

The current rows of a table are what every reader sees: in a Delta table, the rows of the files its current
version names; in a Parquet output, the rows of succeeded runs (`current_filter`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from camray.io.layout import STAGING_FOLDER, SUCCEEDED, TABLES, file_attempt
from camray.io.store import Store
from camray.io.table_stream import read_columns, stream_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRows:
    """Rows of one of a run's files (or of its committed rows), read back: the table, the attempt that wrote
    them, and the columns asked for."""

    table: str
    attempt: int
    rows: pa.Table


class TableFormat(ABC):
    name: str

    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------------------------------ the readers' side

    def refresh(self) -> None:  # noqa: B027 (a format that reads nothing ahead has nothing to read again)
        """Reads again what other runs may have changed since the tables were first read."""

    @abstractmethod
    def has_tables(self) -> bool:
        """Whether the output holds its `runs` table (a run has finished here)."""

    @abstractmethod
    def files(self, table: str, run_id: str | None = None) -> list[str]:
        """Paths of the files holding `table`'s current rows (those of `run_id`, and maybe others, when given)."""

    @abstractmethod
    def schema(self, table: str) -> pa.Schema:
        """The schema its files are read with: the current one, with any column other versions added."""

    def current_filter(self, table: str) -> pads.Expression | None:
        """What keeps a file's rows to the current ones, beyond the files themselves."""
        return None

    @abstractmethod
    def runs(self) -> pa.Table:
        """Every runs row, any schema version (a column a row's version lacks is null)."""

    def succeeded_runs(self) -> pa.Table:
        """`run_id` and `started_at` of every succeeded run, newest first."""
        runs = self.scan("runs", ["run_id", "started_at"], pads.field("status") == SUCCEEDED).read_all()
        return runs.sort_by([("started_at", "descending"), ("run_id", "descending")])

    def succeeded_run_ids(self) -> list[str]:
        return self.succeeded_runs().column("run_id").to_pylist()

    def scan(
        self,
        table: str,
        columns: list[str] | None = None,
        row_filter: pads.Expression | None = None,
        *,
        all_rows: bool = False,
        run_id: str | None = None,
        with_file_index: bool = False,
    ) -> pa.RecordBatchReader:
        """`columns` (all by default) of `table`'s current rows (`all_rows`: every row its files hold) that pass
        `row_filter` (and are of `run_id`), streamed (`camray.io.table_stream`)."""
        schema = self.schema(table)
        expression = row_filter
        for extra in (None if all_rows else self.current_filter(table), _of_run(run_id)):
            if extra is not None:
                expression = extra if expression is None else expression & extra
        files = self.files(table, run_id)
        return stream_files(files, self.store.fs, schema, columns or schema.names, expression, with_file_index)

    # -------------------------------------------------------------------------------------------- a run's side

    @abstractmethod
    def prepare(self) -> None:
        """Under a run's lease, before its first file: whatever the format needs in place (a new output's tables)."""

    @abstractmethod
    def staging_uri(self, table: str, run_id: str) -> str:
        """Where the run's write tasks put its files of `table`."""

    @abstractmethod
    def run_rows(self, run_id: str, columns: dict[str, list[str]]) -> Iterator[RunRows]:
        """The rows every attempt of the run has written so far, staged or committed, one file at a time:
        `columns[table]` of each (a file that cannot be read is deleted: its inputs are done again)."""

    def staged_rows(self, table: str, path: str, columns: list[str], schema: pa.Schema) -> RunRows | None:
        """`columns` of one of a run's staged files, or None when it cannot be read: a write task writes a file
        whole, so one that is not is deleted and its inputs are processed again."""
        try:
            rows = read_columns(self.store.fs, path, columns, schema)
        except (OSError, pa.ArrowInvalid) as exc:
            logger.warning("staged file %s is unreadable (%s); its inputs are processed again", path, exc)
            self.store.delete_file(path)
            return None
        return RunRows(table, file_attempt(path) or 0, rows)

    @abstractmethod
    def commit(self, run_id: str, attempt: int) -> list[str]:
        """Makes the run's rows the tables' current ones, at once, if no input appears twice among them; returns
        the run's files of the row tables, as `TABLE/NAME`."""

    @abstractmethod
    def append_runs_row(self, row: dict) -> None:
        """The attempt's row, into `runs`."""

    def discard_staging(self, run_id: str) -> None:
        self.store.delete_folder(STAGING_FOLDER, run_id)


def _of_run(run_id: str | None) -> pads.Expression | None:
    return None if run_id is None else pads.field("run_id") == run_id


def empty(table: str) -> pa.Table:
    return TABLES[table].empty_table()
