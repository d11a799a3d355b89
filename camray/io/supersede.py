"""The current rows a run's commit supersedes in a Delta table, and the files rewritten without them.

A run supersedes, in `results` and in `errors`, every current row of another run whose `image_uri` is one of its
own rows' images, or the container one of its rows was read from (a container's own error row, whose `image_uri`
is the container: the run read that container again). The table keeps one current row per image: the latest run's.

The search streams the table's `image_uri` and `run_id` past the run's keys in DuckDB (`camray.io.run_keys`'s
connection, on disk, bounded in memory): the keys are the build side, one run's; the table the probe side, every
run's. Only the files holding a superseded row are then read whole, a batch at a time, and written again without
those rows, as `layout.rewrite_file_name`; the commit adds each rewritten file and removes the file it replaces.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from camray.io.layout import rewrite_file_name
from camray.io.table_stream import BATCH_ROWS, stream_files

if TYPE_CHECKING:
    import duckdb
    from deltalake.transaction import AddAction, RemoveAction

    from camray.io.delta_format import DeltaFormat

logger = logging.getLogger(__name__)


def _run_uris(con: duckdb.DuckDBPyConnection) -> None:
    """`run_uris(uri)`: what the run's rows name, images and the containers they came from, once."""
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS run_uris AS
        SELECT DISTINCT image_uri AS uri FROM keys
        UNION SELECT DISTINCT container_uri FROM keys WHERE container_uri IS NOT NULL
        """
    )


def superseded_files(
    delta: DeltaFormat, con: duckdb.DuckDBPyConnection, table: str, run_id: str, attempt: int
) -> tuple[list[AddAction], list[RemoveAction]]:
    """The rewritten files to add, and the files they replace to remove, for the rows of `table` the run
    supersedes (none when it supersedes nothing)."""
    from deltalake.transaction import RemoveAction

    files = delta.files(table)
    if not files:
        return [], []
    _run_uris(con)
    store = delta.store
    history = stream_files(
        files,
        store.fs,
        delta.schema(table),
        ["image_uri"],
        (pc.field("run_id") != run_id) | pc.field("run_id").is_null(),
        with_file_index=True,
    )
    con.register("history", history)
    # The run's keys are the side to build: DuckDB cannot size an Arrow stream and would build on the history.
    con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
    con.execute(
        "CREATE OR REPLACE TABLE matched AS SELECT h.file_index, h.image_uri FROM history h "
        "JOIN run_uris k ON h.image_uri = k.uri"
    )
    con.execute("RESET disabled_optimizers")
    con.unregister("history")
    touched = con.execute("SELECT file_index, count(*) FROM matched GROUP BY file_index ORDER BY file_index").fetchall()
    added: list[AddAction] = []
    removed: list[RemoveAction] = []
    now = int(time.time() * 1000)
    for number, (index, count) in enumerate(touched):
        path = files[index]
        drop = con.sql("SELECT DISTINCT image_uri FROM matched WHERE file_index = ?", params=[index]).to_arrow_table()
        target = store.path(table, rewrite_file_name(run_id, attempt, number))
        kept = rewrite_without(store.fs, path, target, drop.column(0).combine_chunks(), run_id)
        if kept:
            added.append(delta.add_action(table, target))
        relative = path[len(store.path(table)) + 1 :]
        removed.append(RemoveAction(relative, True, now, store.fs.get_file_info(path).size))
        logger.info(
            "run %s supersedes %d rows of %s (%s)",
            run_id,
            count,
            path,
            f"rewritten as {target.rsplit('/', 1)[-1]} with {kept} rows" if kept else "no row left",
        )
    return added, removed


def rewrite_without(filesystem, source: str, target: str, drop: pa.Array, run_id: str) -> int:
    """Writes `source`'s rows to `target`, batch by batch, leaving out those of another run than `run_id` whose
    `image_uri` is in `drop`; returns the rows written (no file is written when none are left)."""
    parquet = pq.ParquetFile(source, filesystem=filesystem)
    writer: pq.ParquetWriter | None = None
    kept = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            own = pc.fill_null(pc.equal(batch.column("run_id"), run_id), False)
            gone = pc.and_(pc.is_in(batch.column("image_uri"), value_set=drop), pc.invert(own))
            batch = batch.filter(pc.invert(pc.fill_null(gone, False)))
            if not batch.num_rows:
                continue
            if writer is None:
                writer = pq.ParquetWriter(target, parquet.schema_arrow, filesystem=filesystem, compression="zstd")
            writer.write_batch(batch)
            kept += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return kept
