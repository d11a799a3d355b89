"""The Delta Lake format (`sink.format: delta`, new outputs' default): `results`, `errors` and `runs` are Delta
tables, written with delta-rs, whose current version holds exactly the current rows: one per image, the latest
run's, with no join.

A run's write tasks put their Parquet files straight into the table folders, under the run's and attempt's names
(`layout.staged_file_name`); a file no log entry names is invisible to every Delta reader. The commit, one per
table and run (results, then errors; the runs row last):
1. reads the run's rows back and checks that no input appears twice (`camray.io.run_keys`);
2. finds the current rows the run supersedes (`camray.io.supersede`): other runs' rows of an image the run
   wrote, in either table (a rewritten image's older result; an error row of an image that now succeeds, or fails
   again; a container's own error row once the run read the container again), and rewrites the few files that
   hold them without those rows;
3. commits the run's files and the rewritten ones as `add` actions, the files they replace as `remove` actions,
   in one log entry (`DeltaTable.create_write_transaction`, mode `append`). A reader sees the table before the
   entry or after it, never in between; the removed rows stay readable by time travel until `camray optimize`
   vacuums their files.

Each entry carries an application transaction `camray:<run_id>` whose version is the attempt that made it: a run
resumed after a crash between its two commits adds only what its earlier commit did not (files of later attempts),
and reads its committed rows back from the table rather than from files a compaction may have replaced.

Tables are read through pyarrow with the job's S3 settings, from the paths the log names: the log is read by
delta-rs, the Parquet by pyarrow (`camray.io.table_stream`). A table using a Delta reader feature camray does not
read (deletion vectors, column mapping), written by another engine, is refused rather than misread.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from camray.io.layout import (
    DELTA,
    REWRITE_PREFIX,
    ROW_TABLES,
    TABLES,
    check_table,
    file_attempt,
    run_file_prefix,
    runs_row_name,
)
from camray.io.run_keys import KEY_COLUMNS, run_keys
from camray.io.schema import SCHEMA_VERSION
from camray.io.table_format import RunRows, TableFormat

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction

logger = logging.getLogger(__name__)

# Reader features whose tables camray reads as plain Parquet files correctly: none change what a file's rows mean.
READABLE_FEATURES = {"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"}
# String statistics longer than this keep their minimum as a prefix (still a lower bound) and drop their maximum.
STATS_STRING_CHARS = 128


class UnreadableTable(RuntimeError):
    """A Delta table that uses features camray cannot read correctly from its files."""


def app_id(run_id: str) -> str:
    """The application transaction that marks a run's commits in a table's log."""
    return f"camray:{run_id}"


def parquet_stats(metadata: pq.FileMetaData) -> str:
    """A Parquet footer as a Delta `add` action's statistics: the row count, and the null counts, minima and
    maxima of its top-level string and integer columns (engines skip files by them; nested and other columns are
    left out, as the protocol allows)."""
    stats: dict[str, object] = {"numRecords": metadata.num_rows}
    minima: dict[str, object] = {}
    maxima: dict[str, object] = {}
    nulls: dict[str, int] = {}
    schema = metadata.schema
    for index in range(metadata.num_columns):
        column = schema.column(index)
        if (
            "." in column.path
            or column.max_repetition_level
            or column.physical_type
            not in (
                "BYTE_ARRAY",
                "INT32",
                "INT64",
            )
        ):
            continue
        # Plain integers and strings only: a timestamp's or decimal's statistics are spelt otherwise in the log.
        if column.logical_type.type not in (("STRING",) if column.physical_type == "BYTE_ARRAY" else ("NONE", "INT")):
            continue
        groups = [metadata.row_group(group).column(index).statistics for group in range(metadata.num_row_groups)]
        if not groups or any(item is None for item in groups):
            continue
        if all(item.has_null_count for item in groups):
            nulls[column.name] = sum(item.null_count for item in groups)
        valued = [item for item in groups if item.has_min_max]
        if len(valued) != len(groups) or not valued:
            continue
        low, high = min(item.min for item in valued), max(item.max for item in valued)
        if isinstance(low, str) and len(low) > STATS_STRING_CHARS:
            low = low[:STATS_STRING_CHARS]
        minima[column.name] = low
        if not (isinstance(high, str) and len(high) > STATS_STRING_CHARS):
            maxima[column.name] = high
    stats.update(minValues=minima, maxValues=maxima, nullCount=nulls)
    return json.dumps(stats)


class DeltaFormat(TableFormat):
    name = DELTA

    def __init__(self, store) -> None:
        super().__init__(store)
        self._tables: dict[str, DeltaTable] = {}

    # ------------------------------------------------------------------------------------------------ tables

    def exists(self, table: str) -> bool:
        from deltalake import DeltaTable

        if table in self._tables:
            return True
        return DeltaTable.is_deltatable(self.store.delta_uri(table), self.store.storage_options())

    def table(self, table: str, refresh: bool = False) -> DeltaTable:
        """The table's `DeltaTable`, loaded once and brought up to its latest version on `refresh`."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        check_table(table)
        loaded = self._tables.get(table)
        if loaded is None:
            try:
                loaded = DeltaTable(self.store.delta_uri(table), storage_options=self.store.storage_options())
            except TableNotFoundError as exc:
                raise FileNotFoundError(f"{self.store.uri_of(table)} is not a Delta table") from exc
            _check_readable(loaded, self.store.uri_of(table))
            self._tables[table] = loaded
        elif refresh:
            loaded.update_incremental()
        return loaded

    def refresh(self) -> None:
        for table in self._tables.values():
            table.update_incremental()

    def has_tables(self) -> bool:
        return self.exists("runs")

    def prepare(self) -> None:
        """Creates the tables a new output lacks, and adds to an existing table the columns this version of the
        schema has and it does not (a newer camray's columns, added as nullable: older rows read them as null)."""
        from deltalake import DeltaTable
        from deltalake import Schema as DeltaSchema

        for table, schema in TABLES.items():
            if not self.exists(table):
                DeltaTable.create(
                    self.store.delta_uri(table),
                    schema=schema,
                    mode="ignore",
                    name=table,
                    description=f"camray {table}, schema version {SCHEMA_VERSION}",
                    storage_options=self.store.storage_options(),
                )
                self._tables.pop(table, None)
                continue
            current = pa.schema(self.table(table, refresh=True).schema().to_arrow())
            missing = [field for field in schema if field.name not in current.names]
            if missing:
                self.table(table).alter.add_columns(DeltaSchema.from_arrow(pa.schema(missing)).fields)
                logger.info("added the columns %s to %s", [field.name for field in missing], self.store.uri_of(table))

    # ------------------------------------------------------------------------------------------ the readers' side

    def file_actions(self, table: str) -> pa.Table:
        """The current version's files: `path` (decoded, relative to the table), `size_bytes`, `num_records`, and
        the statistics (`min.run_id`, `max.run_id`, ...) where the table has them."""
        actions = pa.table(self.table(table).get_add_actions(flatten=True))
        paths = pa.array([unquote(path) for path in actions.column("path").to_pylist()], pa.string())
        return actions.set_column(actions.schema.get_field_index("path"), "path", paths)

    def files(self, table: str, run_id: str | None = None) -> list[str]:
        """In run order: by the oldest run a file holds rows of (its `min.run_id`; a run's id starts with its UTC
        start time), then by name, so that readers meet earlier runs' rows first, rewritten files included."""
        if not self.exists(table):
            return []
        actions = self.file_actions(table)
        paths = actions.column("path").to_pylist()
        if "min.run_id" not in actions.column_names:
            return [self.store.path(table, path) for path in sorted(paths)]
        lows, highs = actions.column("min.run_id").to_pylist(), actions.column("max.run_id").to_pylist()
        kept = [
            (low or "", path)
            for path, low, high in zip(paths, lows, highs, strict=True)
            if run_id is None or low is None or high is None or low <= run_id <= high
        ]
        return [self.store.path(table, path) for _, path in sorted(kept)]

    def schema(self, table: str) -> pa.Schema:
        if not self.exists(table):
            return TABLES[table]
        stored = pa.schema(self.table(table).schema().to_arrow())
        return pa.unify_schemas([TABLES[table], stored], promote_options="permissive")

    def runs(self) -> pa.Table:
        return self.scan("runs").read_all()

    def committed_attempt(self, table: str, run_id: str) -> int | None:
        """The attempt of the run whose commit the table's latest version holds, or None."""
        return self.table(table, refresh=True).transaction_version(app_id(run_id))

    # -------------------------------------------------------------------------------------------- a run's side

    def staging_uri(self, table: str, run_id: str) -> str:
        return self.store.uri_of(check_table(table))

    def _uncommitted(self, table: str, run_id: str, committed: int | None) -> list[str]:
        """The run's files of `table` that no commit of it named: those of attempts after the committed one."""
        return [
            item.path
            for item in self.store.files(table, run_file_prefix(run_id))
            if (file_attempt(item.name) or 0) > (committed or 0)
        ]

    def run_rows(self, run_id: str, columns: dict[str, list[str]]) -> Iterator[RunRows]:
        for table in ROW_TABLES:
            committed = self.committed_attempt(table, run_id) if self.exists(table) else None
            if committed is not None:  # read from the table: a compaction may have moved its rows since
                for batch in self.scan(table, columns[table], run_id=run_id):
                    yield RunRows(table, committed, pa.Table.from_batches([batch]))
            for path in self._uncommitted(table, run_id, committed):
                staged = self.staged_rows(table, path, columns[table], self.schema(table))
                if staged is not None:
                    yield staged

    def commit(self, run_id: str, attempt: int) -> list[str]:
        from camray.io.supersede import superseded_files

        names: list[str] = []
        with run_keys(run_id, self.run_rows(run_id, KEY_COLUMNS)) as keys:
            for table in ROW_TABLES:
                committed = self.committed_attempt(table, run_id)
                if committed is not None and committed >= attempt:
                    continue  # this attempt's commit of the table is in already
                self._discard_stale_rewrites(table, run_id, committed, attempt)
                added = [self.add_action(table, path) for path in self._uncommitted(table, run_id, committed)]
                rewrites, removed = superseded_files(self, keys, table, run_id, attempt)
                actions = [*added, *rewrites, *removed]
                if actions:
                    metadata = {"camray.run_id": run_id, "camray.attempt": attempt}
                    version = self._commit_actions(table, actions, metadata, (app_id(run_id), attempt))
                    logger.info(
                        "run %s: committed %s version %d (%d files added, %d rewritten, %d removed)",
                        run_id,
                        self.store.uri_of(table),
                        version,
                        len(added),
                        len(rewrites),
                        len(removed),
                    )
                names += [f"{table}/{action.path}" for action in added]
        return sorted(names)

    def _discard_stale_rewrites(self, table: str, run_id: str, committed: int | None, attempt: int) -> None:
        """Rewritten files of earlier attempts of the run whose commit of this table never happened."""
        for item in self.store.files(table, f"{REWRITE_PREFIX}{run_file_prefix(run_id)}"):
            if (file_attempt(item.name) or 0) > (committed or 0):
                self.store.delete_file(item.path)

    def add_action(self, table: str, path: str) -> AddAction:
        """An `add` action of a file in the table's folder (`path` on the store), its statistics from its footer."""
        from deltalake.transaction import AddAction

        metadata = pq.read_metadata(path, filesystem=self.store.fs)
        size = self.store.fs.get_file_info(path).size
        relative = path[len(self.store.path(table)) + 1 :]
        return AddAction(relative, size, {}, int(time.time() * 1000), True, parquet_stats(metadata))

    def _commit_actions(
        self, table: str, actions: list, metadata: dict[str, object], transaction: tuple[str, int] | None = None
    ) -> int:
        """One log entry of `actions` on `table`, carrying `metadata` (and the application `transaction`); returns
        the version it made."""
        from deltalake.transaction import CommitProperties, Transaction

        dt = self.table(table, refresh=True)
        properties = CommitProperties(
            custom_metadata=metadata,
            app_transactions=None if transaction is None else [Transaction(*transaction, int(time.time() * 1000))],
        )
        dt.create_write_transaction(actions, "append", dt.schema(), commit_properties=properties)
        dt.update_incremental()
        return dt.version()

    def add_files(self, table: str, paths: list[str], metadata: dict[str, object]) -> None:
        """Commits files already in the table's folder (a migration's), in one log entry."""
        self._commit_actions(table, [self.add_action(table, path) for path in paths], metadata)

    def append_runs_row(self, row: dict) -> None:
        name = runs_row_name(row["run_id"], row["attempt"])
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([row], schema=TABLES["runs"]), buffer, compression="zstd")
        self.store.write_bytes(buffer.getvalue().to_pybytes(), "runs", name)
        action = self.add_action("runs", self.store.path("runs", name))
        self._commit_actions("runs", [action], {"camray.run_id": row["run_id"], "camray.attempt": row["attempt"]})


def _check_readable(table: DeltaTable, uri: str) -> None:
    protocol = table.protocol()
    features = set(protocol.reader_features or ()) - READABLE_FEATURES
    if protocol.min_reader_version > 3 or features or (protocol.min_reader_version == 2):
        named = sorted(features) or [f"reader version {protocol.min_reader_version}"]
        raise UnreadableTable(
            f"{uri} uses Delta features camray does not read ({', '.join(named)}); another engine wrote them: "
            "read this table with that engine, or rewrite it without them"
        )
