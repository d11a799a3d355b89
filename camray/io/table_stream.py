"""A table's files read as one Arrow stream whose memory does not grow with the files' number or size.

Every reader that passes over a whole table (skip-done, resume, a commit's search for the rows it supersedes, the
tools) reads through `stream_files`:
- a few files at a time (`FILES_PER_SCAN`), each group a pyarrow dataset of its own, dropped once read: one
  dataset keeps the Parquet footer of every file it has read (about 0.1 MB a results file) until it is dropped;
- in batches of at most `BATCH_ROWS` rows, a row group's column chunks read as they are decoded rather than
  buffered whole ahead (`pre_buffer` off): a file compacted into row groups of a million rows then costs a few
  batches of memory, not the row group's every selected column at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

# Files read together as one dataset, and files of one such dataset read ahead: their footers are held while
# they are read, and a file read ahead holds its decoded batches.
FILES_PER_SCAN = 16
FILES_READ_AHEAD = 2
# Rows of a batch, and the bytes read from a column chunk at a time.
BATCH_ROWS = 16_384
READ_BUFFER_BYTES = 1 << 20
FILE_INDEX = "file_index"


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

    def scan() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(files), FILES_PER_SCAN):
            group = files[start : start + FILES_PER_SCAN]
            dataset = pads.dataset(group, schema=schema, filesystem=filesystem, format=parquet)
            scanner = dataset.scanner(
                columns=columns,
                filter=row_filter,
                batch_size=BATCH_ROWS,
                batch_readahead=1,
                fragment_readahead=FILES_READ_AHEAD,
            )
            if not with_file_index:
                yield from scanner.to_batches()
                continue
            index = {path: start + offset for offset, path in enumerate(group)}
            for tagged in scanner.scan_batches():
                batch = tagged.record_batch
                position = pa.array([index[tagged.fragment.path]] * batch.num_rows, pa.int32())
                yield pa.RecordBatch.from_arrays([*batch.columns, position], schema=wanted)

    return pa.RecordBatchReader.from_batches(wanted, scan())


def read_columns(filesystem: pafs.FileSystem, path: str, columns: list[str], schema: pa.Schema) -> pa.Table:
    """`columns` of one whole Parquet file; a column the file lacks (an older schema version's) reads as null."""
    import pyarrow.parquet as pq

    present = set(pq.read_schema(path, filesystem=filesystem).names)
    rows = pq.read_table(path, filesystem=filesystem, columns=[name for name in columns if name in present])
    for name in columns:
        if name not in present:
            rows = rows.append_column(schema.field(name), pa.nulls(rows.num_rows, schema.field(name).type))
    return rows.select(columns)
