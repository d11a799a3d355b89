"""`camray migrate`: a Parquet output converted to Delta tables, in place or beside it, equal to its source.

The migrated tables' current rows are the source's current rows as a Delta output would hold them: of the rows of
succeeded runs, for each image the row of the newest run that wrote it, in `results` or `errors`; and a container's
own error row only if no newer run read the container again (`camray.io.supersede`'s rule). `runs` keeps every
attempt's row.

Most of the source's files are current whole (a night's files, whose images no later run wrote again): those are
added to the Delta log as they are (in place), or copied (beside). A file holding some rows that are not current (an
image rewritten since, a failed run's debris) has its current rows written to a new file (`migrated-NNNNN.parquet`),
which camray's Parquet readers leave out; a file holding none is left out. The tables are then committed in one log
entry each, `results`, `errors`, and `runs` last: an output is Delta once its `runs` is, and a migration that died
before that is started over by running it again (its half-made logs and files removed first; the source's own files
are never changed). In place, an unfinished run's staged files move into the table folders, where a Delta run looks
for them to resume it, and the source's files the log does not name are left for `camray optimize` to vacuum.

Which rows are current is found in DuckDB, out of core: every succeeded row's (file, image, container, run order)
is loaded into a database file in a temporary folder, bounded in memory (`MEMORY_LIMIT`) and spilling beyond it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from camray.errors import UsageError
from camray.io.bounded_duckdb import bounded_duckdb
from camray.io.delta_format import DeltaFormat
from camray.io.layout import (
    DELTA_LOG,
    MIGRATED_PREFIX,
    ROW_TABLES,
    STAGING_FOLDER,
    TABLES,
    migrated_file_name,
)
from camray.io.output import Output
from camray.io.parquet_format import ParquetFormat
from camray.io.table_stream import BATCH_ROWS, stream_files

if TYPE_CHECKING:
    import duckdb

logger = logging.getLogger(__name__)

MEMORY_LIMIT = "256MB"
MAX_THREADS = 4
# Rows of a migrated file, at most (as `sink.rows_per_file` writes them).
MIGRATED_FILE_ROWS = 4096


@dataclass
class Migration:
    """What a migration did, table by table."""

    source: str
    dest: str
    files_kept: dict[str, int] = field(default_factory=dict)
    files_rewritten: dict[str, int] = field(default_factory=dict)
    files_left_out: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    staged_moved: int = 0

    def summary(self) -> str:  # one line for the command line
        parts = [
            f"{table}: {self.rows.get(table, 0)} rows in {self.files_kept.get(table, 0)} files kept whole"
            + (f" and {self.files_rewritten[table]} rewritten" if self.files_rewritten.get(table) else "")
            + (f", {self.files_left_out[table]} files left out" if self.files_left_out.get(table) else "")
            for table in TABLES
        ]
        moved = f"; {self.staged_moved} staged files of unfinished runs moved in" if self.staged_moved else ""
        return f"migrated {self.source} to Delta tables at {self.dest}: " + "; ".join(parts) + moved


def migrate(source: Output, dest: Output | None = None, wait_for_lease: float = 0.0) -> Migration:
    """Converts `source`, a Parquet output, to Delta tables at `dest` (in place when None); the module's docstring.
    Holds the lease of each output it writes while it works: no run writes there meanwhile."""
    in_place = dest is None or dest.uri == source.uri
    target = source if in_place else dest
    started = datetime.now(UTC)
    leases = [source.lease(f"migrate-{started:%Y%m%dT%H%M%SZ}", 300.0)]
    if not in_place:
        leases.append(target.lease(leases[0].run_id, 300.0))
    for lease in leases:
        lease.acquire(wait_seconds=wait_for_lease)
    try:
        parquet = _parquet_source(source, in_place)
        delta = DeltaFormat(target.store)
        if in_place:
            _discard_unfinished(delta)
        elif delta.exists("runs") or ParquetFormat(target.store).has_tables():
            raise UsageError(f"--dest {target.uri} already holds an output; give an empty location")
        report = Migration(source.uri, target.uri)
        run_order = parquet.succeeded_runs().column("run_id").combine_chunks()
        with _current_rows(parquet, run_order) as con:
            files = {table: _table_files(parquet, table, con) for table in ROW_TABLES}
            for table, plan in files.items():
                report.rows[table] = sum(kept for _, kept, _ in plan)
                paths = _place(parquet, delta, table, plan, con, in_place, report)
                _create(delta, table)
                if paths:
                    delta.add_files(table, paths, {"camray.migrated_from": source.uri})
        runs = parquet.table_files("runs")
        runs_paths = [_placed(parquet, delta, "runs", path, in_place) for path in runs]
        report.files_kept["runs"], report.rows["runs"] = len(runs), parquet.runs().num_rows
        _create(delta, "runs")
        if runs_paths:
            delta.add_files("runs", runs_paths, {"camray.migrated_from": source.uri})
        if in_place:
            report.staged_moved = _move_staged(parquet, delta)
        logger.info("%s", report.summary())
        return report
    finally:
        for lease in reversed(leases):
            lease.release()


def _parquet_source(source: Output, in_place: bool) -> ParquetFormat:
    delta = DeltaFormat(source.store)
    if delta.exists("runs"):
        raise UsageError(f"{source.uri} is made of Delta tables already: nothing to migrate")
    if not in_place and any(delta.exists(table) for table in ROW_TABLES):
        raise UsageError(f"{source.uri} is half converted in place; finish that with `camray migrate` first")
    parquet = ParquetFormat(source.store)
    if not parquet.has_tables():
        raise UsageError(f"{source.uri} has no runs table: not a camray output, or no job has finished there")
    return parquet


def _discard_unfinished(delta: DeltaFormat) -> None:
    """What an earlier migration in place left before it finished: the row tables' logs and migrated files."""
    store = delta.store
    for table in ROW_TABLES:
        if delta.exists(table):
            logger.warning("removing the Delta log of %s left by an unfinished migration", store.uri_of(table))
            store.delete_folder(table, DELTA_LOG)
        for item in store.files(table, MIGRATED_PREFIX):
            store.delete_file(item.path)


@contextmanager
def _current_rows(parquet: ParquetFormat, run_order: pa.Array) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with `stale(tbl, file_index, image_uri)`, the succeeded rows that are not current, and
    `counted(tbl, file_index, n)`, the succeeded rows of each file (`file_index` in `table_files` order)."""
    threads = min(MAX_THREADS, os.cpu_count() or 1)
    settings = {"preserve_insertion_order": False}
    with bounded_duckdb(MEMORY_LIMIT, threads=threads, on_disk=True, settings=settings) as con:
        con.execute(
            "CREATE TABLE rows (tbl VARCHAR, file_index INTEGER, image_uri VARCHAR, container_uri VARCHAR, "
            "run_order INTEGER)"
        )
        of_succeeded = pads.field("run_id").isin(run_order)
        columns = ["image_uri", "container_uri", "run_id"]
        for table in ROW_TABLES:
            files = parquet.table_files(table)
            read = pa.schema([TABLES[table].field(name) for name in columns])
            for batch in stream_files(files, parquet.store.fs, read, columns, of_succeeded, with_file_index=True):
                chunk = pa.table(
                    {
                        "tbl": pa.array([table] * batch.num_rows, pa.string()),
                        "file_index": batch.column("file_index"),
                        "image_uri": batch.column("image_uri"),
                        "container_uri": batch.column("container_uri"),
                        "run_order": pc.index_in(batch.column("run_id"), value_set=run_order).cast(pa.int32()),
                    }
                )
                con.register("chunk", chunk)
                con.execute("INSERT INTO rows SELECT * FROM chunk")
                con.unregister("chunk")
        con.execute(
            """
            CREATE TABLE touched AS
            SELECT uri, min(run_order) AS newest FROM (
                SELECT image_uri AS uri, run_order FROM rows
                UNION ALL SELECT container_uri, run_order FROM rows WHERE container_uri IS NOT NULL
            ) GROUP BY uri
            """
        )
        con.execute(
            """
            CREATE TABLE stale AS SELECT r.tbl, r.file_index, r.image_uri
            FROM rows r JOIN touched t ON t.uri = r.image_uri WHERE t.newest < r.run_order
            """
        )
        con.execute("CREATE TABLE counted AS SELECT tbl, file_index, count(*) AS n FROM rows GROUP BY ALL")
        yield con


def _table_files(parquet: ParquetFormat, table: str, con) -> list[tuple[str, int, int]]:
    """(path, current rows, rows it holds) of each of the table's files that holds any current row."""
    files = parquet.table_files(table)
    succeeded = dict(con.execute("SELECT file_index, n FROM counted WHERE tbl = ?", [table]).fetchall())
    stale = dict(con.execute("SELECT file_index, count(*) FROM stale WHERE tbl = ? GROUP BY ALL", [table]).fetchall())
    plan = []
    for index, path in enumerate(files):
        current = succeeded.get(index, 0) - stale.get(index, 0)
        if current:
            plan.append((path, current, pq.read_metadata(path, filesystem=parquet.store.fs).num_rows))
    return plan


def _place(
    parquet: ParquetFormat,
    delta: DeltaFormat,
    table: str,
    plan: list[tuple[str, int, int]],
    con,
    in_place: bool,
    report: Migration,
) -> list[str]:
    """The files of `table` in the target's folder, as its log will name them: whole files kept (in place) or
    copied (beside), mixed ones written as migrated files of their current rows."""
    files = parquet.table_files(table)
    index_of = {path: index for index, path in enumerate(files)}
    placed: list[str] = []
    rewritten = 0
    run_order = parquet.succeeded_run_ids()
    for path, current, total in plan:
        if current == total:
            placed.append(_placed(parquet, delta, table, path, in_place))
            continue
        stale = con.sql(
            "SELECT image_uri FROM stale WHERE tbl = ? AND file_index = ?", params=[table, index_of[path]]
        ).to_arrow_table()
        target = delta.store.path(table, migrated_file_name(rewritten))
        _write_current(parquet.store.fs, path, delta.store.fs, target, stale.column(0).combine_chunks(), run_order)
        placed.append(target)
        rewritten += 1
    report.files_kept[table] = len(plan) - rewritten
    report.files_rewritten[table] = rewritten
    report.files_left_out[table] = len(files) - len(plan)
    return placed


def _placed(parquet: ParquetFormat, delta: DeltaFormat, table: str, path: str, in_place: bool) -> str:
    """`path` (a file of the source's `table`, at any depth) where the target's log names it."""
    if in_place:
        return path
    relative = path[len(parquet.store.path(table)) + 1 :]
    target = delta.store.path(table, relative)
    delta.store.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    pafs.copy_files(path, target, source_filesystem=parquet.store.fs, destination_filesystem=delta.store.fs)
    return target


def _write_current(source_fs, source: str, target_fs, target: str, stale: pa.Array, succeeded: list[str]) -> None:
    """`source`'s rows of succeeded runs that are not `stale`, batch by batch, into `target`."""
    parquet = pq.ParquetFile(source, filesystem=source_fs)
    runs = pa.array(succeeded, pa.string())
    writer = pq.ParquetWriter(target, parquet.schema_arrow, filesystem=target_fs, compression="zstd")
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            keep = pc.and_(
                pc.is_in(batch.column("run_id"), value_set=runs),
                pc.invert(pc.is_in(batch.column("image_uri"), value_set=stale)),
            )
            kept = batch.filter(pc.fill_null(keep, False))
            if kept.num_rows:
                writer.write_batch(kept)
    finally:
        writer.close()


def _create(delta: DeltaFormat, table: str) -> None:
    from deltalake import DeltaTable

    from camray.io.schema import SCHEMA_VERSION

    DeltaTable.create(
        delta.store.delta_uri(table),
        schema=TABLES[table],
        mode="ignore",
        name=table,
        description=f"camray {table}, schema version {SCHEMA_VERSION}",
        storage_options=delta.store.storage_options(),
    )


def _move_staged(parquet: ParquetFormat, delta: DeltaFormat) -> int:
    """Unfinished runs' staged files, into the table folders where a Delta run resuming them looks (not committed:
    no reader sees them)."""
    store = parquet.store
    moved = 0
    selector = pafs.FileSelector(store.path(STAGING_FOLDER), allow_not_found=True)
    for info in store.fs.get_file_info(selector):
        if info.type != pafs.FileType.Directory:
            continue
        for table in ROW_TABLES:
            for item in store.files(f"{STAGING_FOLDER}/{info.base_name}/{table}"):
                store.fs.move(item.path, delta.store.path(table, item.name))
                moved += 1
    return moved
