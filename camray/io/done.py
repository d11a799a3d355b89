"""Skip-done: the listing without the inputs that succeeded runs already annotated, with the driver's memory
bounded whatever the output's history.

An input is done when a current row of `results` holds its URI and version, with this model and these settings
(`config_fingerprint`); and, where the listing gives the input labels, when that row holds the same labels. The
current rows are the Delta table's current version, or a Parquet output's rows of succeeded runs. `results` is
the only truth: nothing is cached beside it, so rows written by any camray, older ones included, count.

Labels are compared as keys (`labels_key`): the distinct class ids, ascending, comma-separated. The listing's key
is its labels resolved against the model's classes (the runner's, which knows them; a column `labels_key` of the
listing); a result's is read from its `labels` column. A listing row without a key (no labels, as every input
had before labels existed, or labels that arrive inside a container at read time) is matched on URI and version
alone, as before; one with a key is redone when the result holds other labels, or none.

The anti-join runs in DuckDB, out of core: the night's listing is streamed into a table of a database file in
a local temporary folder, the history is streamed past it once (only `image_uri` and `source_version`, the
rows of other runs, models and settings left out by pyarrow's filter, row groups pruned on their statistics),
and what is left streams out in the listing's order. DuckDB holds to `MEMORY_LIMIT` and spills to the folder
beyond it, so a listing of millions of objects and a history of a hundred million rows both pass.

The history is read through pyarrow, a few files and a bounded batch at a time (`camray.io.table_stream`), handed to
DuckDB as one Arrow stream: DuckDB's own httpfs cannot reach every store camray writes to, and one dataset over all
of `results` would hold every file's Parquet footer until the scan ends, which grows with the history.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from camray.io.bounded_duckdb import bounded_duckdb
from camray.io.schema import LABEL
from camray.io.table_stream import stream_files

if TYPE_CHECKING:
    import duckdb

    from camray.io.output import Output

logger = logging.getLogger(__name__)

# DuckDB's working memory for the join; beyond it, the join and the sort spill to the temporary folder.
MEMORY_LIMIT = "128MB"
MAX_THREADS = 4
# Rows of the listing handed back per chunk.
OUT_ROWS = 50_000

KEY = pa.schema([("image_uri", pa.string()), ("source_version", pa.string())])
# The column of a listing chunk with its labels' key, where the runner adds it.
LABELS_KEY = "labels_key"
# The columns a results file is read for; any that an older file lacks reads as nulls (and matches nothing).
_READ = pa.schema(
    [
        ("image_uri", pa.string()),
        ("source_version", pa.string()),
        ("model", pa.string()),
        ("config_fingerprint", pa.string()),
        ("run_id", pa.string()),
        ("labels", pa.list_(LABEL)),
    ]
)
LABELS = pa.list_(LABEL)
# A result's labels (the column named) as `labels_key` spells them, in DuckDB's SQL.
_RESULT_LABELS_KEY = "array_to_string(list_sort(list_distinct(list_transform({labels}, lambda x: x.class_id))), ',')"


def labels_key(class_ids: Iterable[int]) -> str:
    """The set of an image's given classes as skip-done compares it, however they were written and ordered: the
    distinct ids ascending, comma-separated (`"3,17"`; `""` for none)."""
    return ",".join(str(index) for index in sorted(set(class_ids)))


@dataclass(frozen=True)
class DoneSet:
    """Where the done work is: the files holding the current rows of an output's `results`, and what keeps a
    row among them to those of `model` and `fingerprint` (and to the current ones). `of` finds the files; the rows
    are read when `batches` is."""

    files: list[str]
    filesystem: pafs.FileSystem
    wanted: pads.Expression

    @classmethod
    def of(cls, output: Output, model: str, fingerprint: str) -> DoneSet:
        wanted = (
            (pads.field("model") == model)
            & (pads.field("config_fingerprint") == fingerprint)
            & (pads.field("source_version") != "")
        )
        current = output.format.current_filter("results")
        return cls(output.files("results"), output.store.fs, wanted if current is None else wanted & current)

    def batches(self, with_labels: bool = False) -> pa.RecordBatchReader:
        """(image_uri, source_version[, labels]) of every done row, as one stream read a few files and a batch at
        a time."""
        columns = [*KEY.names, *(["labels"] if with_labels else [])]
        return stream_files(self.files, self.filesystem, _READ, columns, self.wanted)


def without_done(chunks: Iterable[pa.Table], done: DoneSet, out_rows: int = OUT_ROWS) -> Iterator[pa.Table]:
    """The listing chunks (`uri`, `size`, `version`, ...) without the entries whose (uri, version) `done` holds,
    in the listing's order, re-chunked to `out_rows`. Entries without a version (a manifest's) are always kept:
    without one, "the same file" cannot be told. Entries with a `labels_key` are done only where the result's
    labels have that key (the module's docstring)."""
    if not done.files:
        yield from chunks
        return
    logger.info("skip-done: against %d results files", len(done.files))

    # On disk: the night's listing is a table that may outgrow the limit too. Its order is restored by `seq`,
    # so DuckDB need not keep it.
    settings = {"preserve_insertion_order": False}
    threads = min(MAX_THREADS, os.cpu_count() or 1)
    with bounded_duckdb(MEMORY_LIMIT, threads=threads, on_disk=True, settings=settings) as connection:
        yield from _anti_join(connection, chunks, done.batches, out_rows)


def _anti_join(
    connection: duckdb.DuckDBPyConnection,
    chunks: Iterable[pa.Table],
    history_of: Callable[[bool], pa.RecordBatchReader],
    out_rows: int,
) -> Iterator[pa.Table]:
    schema: pa.Schema | None = None
    position = 0
    labelled = False  # whether any listed entry has a labels key: only then are the results' labels read
    for chunk in chunks:
        if LABELS_KEY in chunk.column_names:
            labelled = labelled or chunk.column(LABELS_KEY).null_count < chunk.num_rows
        if schema is None:
            schema = chunk.schema
            connection.register("chunk", chunk.slice(0, 0).append_column("seq", pa.array([], pa.int64())))
            connection.execute("CREATE TABLE listing AS SELECT * FROM chunk")
        numbered = chunk.append_column("seq", pa.array(range(position, position + chunk.num_rows), pa.int64()))
        connection.register("chunk", numbered)
        connection.execute("INSERT INTO listing SELECT * FROM chunk")
        position += chunk.num_rows
    connection.unregister("chunk")
    if schema is None or not position:
        return
    connection.register("history", history_of(labelled))
    # The history streams past a hash table of the listing, which is the side to build: it is one night's,
    # the history is every night's. DuckDB cannot size an Arrow stream, so its own choice of side is off here.
    connection.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
    result_key = _RESULT_LABELS_KEY.format(labels="history.labels")
    same_labels = f" AND (listing.{LABELS_KEY} IS NULL OR listing.{LABELS_KEY} = {result_key})" if labelled else ""
    connection.execute(
        f"""
        CREATE TABLE matched AS SELECT listing.seq FROM history JOIN listing
        ON history.image_uri = listing.uri AND history.source_version = listing.version{same_labels}
        """
    )
    connection.unregister("history")
    spilled = _spilled_bytes(connection)
    connection.execute("RESET disabled_optimizers")
    columns = ", ".join(f'"{name}"' for name in schema.names)
    result = connection.sql(
        f"SELECT {columns} FROM listing WHERE version = '' OR seq NOT IN (SELECT seq FROM matched) ORDER BY seq"
    )
    reader = result.to_arrow_reader(out_rows)
    kept = 0
    for batch in reader:
        if batch.num_rows:
            kept += batch.num_rows
            yield pa.Table.from_batches([batch]).cast(schema)
    spilled = max(spilled, _spilled_bytes(connection))
    logger.info(
        "skip-done: %d listed, %d done already; DuckDB spilled %.1f MiB to disk",
        position,
        position - kept,
        spilled / 2**20,
    )


def _spilled_bytes(connection: duckdb.DuckDBPyConnection) -> int:
    return connection.sql("SELECT coalesce(sum(size), 0) FROM duckdb_temporary_files()").fetchall()[0][0]


def without_inputs(chunk: pa.Table, inputs: pa.Array) -> pa.Table:
    """The chunk without the URIs in `inputs` (held by earlier attempts of this run, whatever their version)."""
    if not len(inputs):
        return chunk
    return chunk.filter(pc.invert(pc.is_in(chunk.column("uri"), value_set=inputs)))
