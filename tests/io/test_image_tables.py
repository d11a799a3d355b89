"""Parquet image tables written by Hugging Face `datasets` (and a binary column as Ray Data and Spark write it),
read back row by row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from container_inputs import write_table

from camray.io.container_samples import Sample, SampleFailure
from camray.io.image_tables import TableColumns, TableSchemaError, check_schema, iter_table


@pytest.fixture(scope="module")
def jpegs(small_photos) -> list[bytes]:
    return [path.read_bytes() for path in sorted(small_photos.iterdir())[:4]]


def _read(path, columns: TableColumns) -> list[Sample | SampleFailure]:
    with pa.OSFile(str(path)) as handle:
        return list(iter_table(handle, columns))


def test_a_datasets_table_by_position_with_class_ids(jpegs, tmp_path):
    table = write_table(tmp_path / "t.parquet", [jpegs[0], None, jpegs[2]], labels=[281, 3, 999])
    items = _read(table, TableColumns(labels="label"))
    assert [(item.key, type(item).__name__) for item in items] == [
        ("0", "Sample"),
        ("1", "SampleFailure"),
        ("2", "Sample"),
    ]
    assert items[0].data == jpegs[0] and items[2].data == jpegs[2]
    assert [items[0].labels, items[2].labels] == [["281"], ["999"]]
    assert items[1].error_type == "NoImage" and "row 1" in items[1].message


def test_ids_and_lists_of_labels_from_named_columns(jpegs, tmp_path):
    table = write_table(
        tmp_path / "t.parquet", jpegs[:3], name=["cat-1", "dog-7", None], tags=[["tabby", "tiger cat"], [], None]
    )
    items = _read(table, TableColumns(id="name", labels="tags"))
    assert [item.key for item in items] == ["cat-1", "dog-7", None]
    assert items[0].labels == ["tabby", "tiger cat"] and items[1].labels == [] and items[2].error_type == "NoId"


def test_a_binary_column_as_ray_data_and_spark_write_it(jpegs, tmp_path):
    path = tmp_path / "part-0.snappy.parquet"
    pq.write_table(pa.table({"bytes": pa.array(jpegs, pa.binary()), "n": [1, 2, 3, 4]}), path, row_group_size=3)
    items = _read(path, TableColumns(image="bytes", id="n"))
    assert [(item.key, item.data) for item in items] == [(str(i + 1), jpegs[i]) for i in range(4)]


def test_columns_the_table_lacks_are_named_with_their_setting(tmp_path):
    schema = pa.schema([("img", pa.binary()), ("caption", pa.string()), ("meta", pa.struct([("path", pa.string())]))])
    with pytest.raises(TableSchemaError, match="`source.image_column` 'image' is not a column"):
        check_schema(schema, TableColumns())
    with pytest.raises(TableSchemaError, match="`source.image_column` 'caption' is string"):
        check_schema(schema, TableColumns(image="caption"))
    with pytest.raises(TableSchemaError, match="struct without a binary `bytes` field"):
        check_schema(schema, TableColumns(image="meta"))
    with pytest.raises(TableSchemaError, match="`source.labels_column` 'label'"):
        check_schema(schema, TableColumns(image="img", labels="label"))
    pq.write_table(
        pa.Table.from_pylist([{"img": b"x", "caption": "c", "meta": None}], schema=schema), tmp_path / "t.parquet"
    )
    [failure] = _read(tmp_path / "t.parquet", TableColumns())
    assert failure.key is None and failure.error_type == "TableSchemaError"


def test_a_file_that_is_no_parquet_is_one_failure_of_the_file(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
    [failure] = _read(tmp_path / "t.parquet", TableColumns())
    assert failure.key is None and failure.error_type == "UnreadableTable"
