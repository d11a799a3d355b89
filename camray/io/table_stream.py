"""A table's files read as one Arrow stream whose memory does not grow with the files' number or size.

Every reader that passes over a whole table (skip-done, resume, a commit's search for the rows it supersedes, the
tools) reads through `stream_files`:
- a few files at a time (`FILES_PER_SCAN`), each group a pyarrow dataset of its own, dropped once read: one
  dataset keeps the Parquet footer of every file it has read (about 0.1 MB a results file) until it is dropped;
- in batches of at most `BATCH_ROWS` rows, a row group's column chunks read as they are decoded rather than
  buffered whole ahead (`pre_buffer` off): a file compacted into row groups of a million rows then costs a few
  batches of memory, not the row group's every selected column at once;
- resumed where the store broke it off: a store failing in passing past pyarrow's own retries (`camray.io.s3.
  is_transient`: a `503` answered to a column chunk smaller than the error's body is one) reopens the file being
  read and skips the rows already given, up to `READ_ATTEMPTS` times without progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from camray.io.s3 import is_transient

logger = logging.getLogger(__name__)

# Files read together as one dataset, and files of one such dataset read ahead: their footers are held while
# they are read, and a file read ahead holds its decoded batches.
FILES_PER_SCAN = 16
FILES_READ_AHEAD = 2
# Rows of a batch, and the bytes read from a column chunk at a time.
BATCH_ROWS = 16_384
READ_BUFFER_BYTES = 1 << 20
FILE_INDEX = "file_index"
# Attempts at a group of files without a row read between them, and the wait before the first retry (doubled each
# time, as the SDK's own backoff).
READ_ATTEMPTS = 6
RETRY_BACKOFF_S = 0.5


def _format() -> pads.ParquetFileFormat:
    options = pads.ParquetFragmentScanOptions(pre_buffer=False, use_buffered_stream=True, buffer_size=READ_BUFFER_BYTES)
    return pads.ParquetFileFormat(default_fragment_scan_options=options)


def stream_files(
    files: list[str],
    filesystem: pafs.FileSystem,
    schema: pa.Schema,
    columns: list[str],
    row_filter: pads.Expression | None = None,
    with_file_index: bool = False,
) -> pa.RecordBatchReader:
    """`columns` of the rows of `files` (read with `schema`) that pass `row_filter`, as one Arrow stream in file
    order; with `with_file_index`, each batch also says which file of `files` it came from (`file_index`)."""
    wanted = pa.schema([schema.field(name) for name in columns])
    if with_file_index:
        wanted = wanted.append(pa.field(FILE_INDEX, pa.int32()))
    parquet = _format()

    def scanned(group: list[str]) -> Iterator[tuple[str, pa.RecordBatch]]:
        dataset = pads.dataset(group, schema=schema, filesystem=filesystem, format=parquet)
        scanner = dataset.scanner(
            columns=columns,
            filter=row_filter,
            batch_size=BATCH_ROWS,
            batch_readahead=1,
            fragment_readahead=FILES_READ_AHEAD,
        )
        for tagged in scanner.scan_batches():
            yield tagged.fragment.path, tagged.record_batch

    def scan() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(files), FILES_PER_SCAN):
            for offset, batch in _resumed(files[start : start + FILES_PER_SCAN], scanned):
                if with_file_index:
                    position = pa.array([start + offset] * batch.num_rows, pa.int32())
                    batch = pa.RecordBatch.from_arrays([*batch.columns, position], schema=wanted)
                yield batch

    return pa.RecordBatchReader.from_batches(wanted, scan())


def _resumed(
    group: list[str], scanned: Callable[[list[str]], Iterator[tuple[str, pa.RecordBatch]]]
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(index in `group`, batch) of `scanned(group)`, rescanned from the file it broke off in when the store fails
    in passing. A file's batches come in the same order whenever it is read (one batch size, one filter, the scan
    ordered), so the rows of that file already given are skipped by count."""
    index = {path: offset for offset, path in enumerate(group)}
    current, given, failures = 0, 0, 0  # the file being read, its rows given so far, failures since a row
    while True:
        skip = given
        try:
            for path, batch in scanned(group[current:]):
                offset = index[path]
                if offset != current:
                    current, given, skip = offset, 0, 0
                if skip:
                    cut = min(skip, batch.num_rows)
                    batch, skip = batch.slice(cut), skip - cut
                    if not batch.num_rows:
                        continue
                given += batch.num_rows
                failures = 0
                yield offset, batch
            return
        except OSError as exc:
            failures = _after_failure(exc, failures, group[current], given)


def read_columns(filesystem: pafs.FileSystem, path: str, columns: list[str], schema: pa.Schema) -> pa.Table:
    """`columns` of one whole Parquet file; a column the file lacks (an older schema version's) reads as null. A
    store failing in passing is tried again (`READ_ATTEMPTS`), so that a file is called unreadable only for what it
    holds."""
    import pyarrow.parquet as pq

    failures = 0
    while True:
        try:
            present = set(pq.read_schema(path, filesystem=filesystem).names)
            rows = pq.read_table(path, filesystem=filesystem, columns=[name for name in columns if name in present])
            break
        except OSError as exc:
            failures = _after_failure(exc, failures, path)
    for name in columns:
        if name not in present:
            rows = rows.append_column(schema.field(name), pa.nulls(rows.num_rows, schema.field(name).type))
    return rows.select(columns)


def _after_failure(exc: OSError, failures: int, path: str, from_row: int = 0) -> int:
    """The failures without progress counting `exc`, once it is time to read `path` again; `exc` raised where it is
    not the store failing in passing, or the attempts are spent."""
    failures += 1
    if not is_transient(exc) or failures >= READ_ATTEMPTS:
        raise exc
    wait = RETRY_BACKOFF_S * 2 ** (failures - 1)
    logger.warning("reading %s failed (%s); reading it again from row %d in %.1f s", path, exc, from_row, wait)
    time.sleep(wait)
    return failures
