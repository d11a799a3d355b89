"""Parquet image tables: a file's rows as samples, a row group at a time.

The image column is binary (the tables Ray Data, Spark and Daft write) or a struct with a `bytes` field (the
Hugging Face `datasets` Image layout, `{bytes, path}`); a row is named by `id_column`'s value or by its position
in the file, from 0; its labels come from `labels_column`, a class name or id or a list of them.

Memory: the columns read (the image column and, where named, the id and labels columns) of consecutive row
groups up to `READ_BYTES`, or of one row group where it is larger; `datasets` writes row groups of 100 images,
Spark and Ray Data of up to about 128 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from camray.io.container_samples import LabelsError, Sample, SampleFailure, label_tokens

# Rows taken from a row group at once, as Python values.
BATCH_ROWS = 64
# Bytes of the columns read that consecutive small row groups are read together up to, in one ranged read.
READ_BYTES = 16 << 20


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a table hold what (`source.image_column`, `id_column`, `labels_column`)."""

    image: str = "image"
    id: str | None = None
    labels: str | None = None


class TableSchemaError(ValueError):
    """The table lacks a named column, or holds something else in it; the message names the setting."""


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)


def check_schema(schema: pa.Schema, columns: TableColumns) -> None:
    """Raises `TableSchemaError`, naming the setting, when `schema` cannot serve `columns`."""
    names = schema.names
    if columns.image not in names:
        raise TableSchemaError(f"`source.image_column` {columns.image!r} is not a column of the table: {names}")
    kind = schema.field(columns.image).type
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        if index < 0 or not _is_binary(kind.field(index).type):
            raise TableSchemaError(
                f"`source.image_column` {columns.image!r} is a struct without a binary `bytes` field: {kind}"
            )
    elif not _is_binary(kind):
        raise TableSchemaError(f"`source.image_column` {columns.image!r} is {kind}, not binary or a struct of bytes")
    for setting, name in (("id_column", columns.id), ("labels_column", columns.labels)):
        if name is not None and name not in names:
            raise TableSchemaError(f"`source.{setting}` {name!r} is not a column of the table: {names}")


def iter_table(handle: pa.NativeFile, columns: TableColumns) -> Iterator[Sample | SampleFailure]:
    """The file's rows as samples, in order; a file that is no Parquet, or lacks the columns, is one failure
    of the file (`key` None). A row without image bytes, id or readable labels is that row's failure."""
    try:
        parquet = pq.ParquetFile(handle, pre_buffer=True)
        check_schema(parquet.schema_arrow, columns)
    except TableSchemaError as exc:
        yield SampleFailure(None, "TableSchemaError", str(exc))
        return
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # OSError (the store, the disk) is the caller's
        yield SampleFailure(None, "UnreadableTable", f"not a readable Parquet file: {exc}")
        return
    wanted = list(dict.fromkeys(name for name in (columns.image, columns.id, columns.labels) if name))
    position = 0
    try:
        for batch in _row_group_batches(parquet, wanted):
            images = batch.column(columns.image)
            paths = None
            if pa.types.is_struct(images.type):
                if images.type.get_field_index("path") >= 0:
                    paths = images.field("path").to_pylist()
                images = images.field("bytes")
            ids = batch.column(columns.id).to_pylist() if columns.id else None
            labels = batch.column(columns.labels).to_pylist() if columns.labels else None
            for row, data in enumerate(images.to_pylist()):
                yield _sample(
                    position + row,
                    data,
                    ids[row] if ids else None,
                    labels[row] if labels else None,
                    paths[row] if paths else None,
                    columns,
                )
            position += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        yield SampleFailure(None, "UnreadableTable", f"the file cannot be read after row {position}: {exc}")


def _row_group_batches(parquet: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The file's rows, consecutive row groups read together up to `READ_BYTES` of the columns read (or one
    row group, when larger): asked for every row group at once, pyarrow buffers the whole file's columns ahead
    (measured: a 200 MB file held whole); so many at a time, they come in one ranged read, dropped once read."""
    metadata = parquet.metadata
    group: list[int] = []
    group_bytes = 0
    for row_group in range(parquet.num_row_groups):
        chunks = metadata.row_group(row_group)
        group.append(row_group)
        group_bytes += sum(
            chunks.column(index).total_compressed_size
            for index in range(chunks.num_columns)
            if chunks.column(index).path_in_schema.split(".", 1)[0] in columns
        )
        if group_bytes >= READ_BYTES or row_group == parquet.num_row_groups - 1:
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=group, columns=columns)
            group, group_bytes = [], 0


def _sample(
    position: int, data: bytes | None, row_id: object, labels: object, path: str | None, columns: TableColumns
) -> Sample | SampleFailure:
    if columns.id is None:
        key = str(position)
    elif row_id is None or str(row_id) == "":
        return SampleFailure(None, "NoId", f"row {position} has no id in `{columns.id}`")
    elif isinstance(row_id, bool) or not isinstance(row_id, str | int):
        return SampleFailure(
            None, "BadId", f"row {position}: `{columns.id}` holds {type(row_id).__name__}, not str or int"
        )
    else:
        key = str(row_id)
    if data is None:
        where = f", only a path ({path}): images are read from the table itself" if path else ""
        return SampleFailure(key, "NoImage", f"`{columns.image}` holds no bytes (row {position}){where}")
    try:
        tokens = label_tokens(labels)
    except LabelsError as exc:
        return SampleFailure(key, "BadLabels", f"`{columns.labels}` (row {position}): {exc}")
    return Sample(key, data, tokens)
