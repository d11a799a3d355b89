"""The containers left to read, staged under `_listing/` for the read tasks, and the tallies the tasks leave.

A container's samples are only counted by reading it, so the run's accounting ("every input exactly once")
needs the read tasks to say what they read. Each read task, once it has read every container of its listing
file to the end, writes a tally (`_staging/<run_id>/tallies/aNN-NNNNN.parquet`): per container, the rows it gave
out. The runner then expects exactly that many rows in the attempt's staged files; a listing file without its
tally (its task failed, and Ray Data dropped its blocks under `runtime.max_errored_blocks`) makes the attempt
`incomplete`, and the next attempt finishes it. Tallies live in the run's staging folder: a resumed attempt reads
its predecessors' to skip the containers they finished (`camray.io.container_done`).

Listing files hold whole containers, grouped up to `TASK_BYTES` of container bytes (or `TASK_CONTAINERS`
containers) each: a large shard is one read task, thousands of small ones a few. The read task only streams
bytes out; decoding runs in tasks of its own, so one large shard still keeps every CPU decoding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from camray.io import layout
from camray.io.container_done import PRIOR, TALLIES, TO_READ
from camray.io.layout import ROW_TABLES
from camray.io.sources import S3Settings, filesystem_for, join_uri, write_object

if TYPE_CHECKING:
    from camray.io.output import Output

# Container bytes per read task, and containers per read task at most.
TASK_BYTES = 256 << 20
TASK_CONTAINERS = 256
# What an entry of unknown size (a manifest's) counts for when grouping.
UNKNOWN_SIZE_BYTES = 16 << 20
# Bytes of the largest sample assumed when the pool is sized before any container is read: a lower bound on the
# samples, so that no more actors start than there are batches (`camray.planning`).
PLANNING_SAMPLE_BYTES = 256 << 10

_TALLY_NAME = re.compile(r"^a(\d+)-(\d+)\.parquet$")


@dataclass
class StagedContainers:
    """The containers an attempt reads, as listing files under `uri`; `rows` counts containers, `bytes` their
    listed sizes. `images` is a lower bound on the samples, for sizing the pool."""

    uri: str
    tallies_uri: str
    attempt: int
    kind: str  # `webdataset` or `parquet`
    files: int = 0
    rows: int = 0
    bytes: int = 0

    @property
    def images(self) -> int:
        return max(self.rows, self.bytes // PLANNING_SAMPLE_BYTES)

    def tally_uri(self, index: int) -> str:
        return join_uri(self.tallies_uri, layout.tally_file_name(self.attempt, index))

    def expected_rows(self, s3: S3Settings) -> tuple[int | None, str]:
        """The rows the attempt's read tasks gave out, by their tallies; None, and why, where a listing file
        has none."""
        tallies = read_tallies(self.tallies_uri, s3, attempt=self.attempt)
        missing = self.files - len(set(tallies.column("index").to_pylist()))
        if missing:
            return (
                None,
                f"{missing} of {self.files} read tasks left no tally (blocks dropped under "
                "`runtime.max_errored_blocks`)",
            )
        return int(pc.sum(tallies.column("emitted")).as_py() or 0), ""


def _entry_bytes(size: int) -> int:
    return size if size >= 0 else UNKNOWN_SIZE_BYTES


def stage(
    listing_uri: str, tallies_uri: str, attempt: int, entries: Iterable[pa.Table], s3: S3Settings, kind: str
) -> StagedContainers:
    """Writes the `TO_READ` entries as listing files of whole containers (see the module docstring)."""
    staged = StagedContainers(listing_uri, tallies_uri, attempt, kind)
    fs, base = filesystem_for(listing_uri, s3)
    fs.create_dir(base, recursive=True)
    pending: list[pa.Table] = []
    pending_bytes = pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_bytes, pending_rows
        if pending_rows:
            table = pa.concat_tables(pending).cast(TO_READ)
            pq.write_table(table, f"{base}/{layout.listing_file_name(staged.files)}", filesystem=fs)
            staged.files += 1
        pending, pending_bytes, pending_rows = [], 0, 0

    for chunk in entries:
        sizes = chunk.column("size").to_pylist()
        start = 0
        for row, size in enumerate(sizes):
            pending_bytes += _entry_bytes(size)
            pending_rows += 1
            staged.rows += 1
            staged.bytes += max(size, 0)
            if pending_bytes >= TASK_BYTES or pending_rows >= TASK_CONTAINERS:
                pending.append(chunk.slice(start, row + 1 - start))
                start = row + 1
                flush()
        if start < chunk.num_rows:
            pending.append(chunk.slice(start))
    flush()
    return staged


def write_tally(uri: str, rows: list[tuple[str, int]], attempt: int, s3: S3Settings) -> None:
    """A read task's tally: (container_uri, rows given out) of each container it read to the end."""
    table = pa.table(
        {
            "container_uri": pa.array([uri_ for uri_, _ in rows], pa.string()),
            "attempt": pa.array([attempt] * len(rows), pa.int32()),
            "emitted": pa.array([emitted for _, emitted in rows], pa.int64()),
        },
        schema=TALLIES,
    )
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    write_object(uri, buffer.getvalue().to_pybytes(), s3)


def read_tallies(tallies_uri: str, s3: S3Settings, attempt: int | None = None, before: int | None = None) -> pa.Table:
    """The tallies of `attempt`, or of the attempts before `before`, with the listing file's `index`."""
    fs, base = filesystem_for(tallies_uri, s3)
    tables = []
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        match = _TALLY_NAME.match(info.base_name)
        if info.type != pafs.FileType.File or match is None:
            continue
        number, index = int(match.group(1)), int(match.group(2))
        if (attempt is not None and number != attempt) or (before is not None and number >= before):
            continue
        table = pq.read_table(info.path, filesystem=fs).cast(TALLIES)
        tables.append(table.append_column("index", pa.array([index] * table.num_rows, pa.int32())))
    empty = TALLIES.empty_table().append_column("index", pa.array([], pa.int32()))
    return pa.concat_tables([empty, *tables])


def prior_rows(output: Output, run_id: str) -> pa.RecordBatchReader:
    """(container_uri, image_uri, attempt) of every row the run's earlier attempts wrote (`TableFormat.run_rows`),
    one file at a time."""
    columns = {table: ["container_uri", "image_uri"] for table in ROW_TABLES}

    def batches() -> Iterator[pa.RecordBatch]:
        for part in output.format.run_rows(run_id, columns):
            attempt = pa.array([part.attempt] * part.rows.num_rows, pa.int32())
            yield from part.rows.append_column("attempt", attempt).cast(PRIOR).to_batches()

    return pa.RecordBatchReader.from_batches(PRIOR, batches())
