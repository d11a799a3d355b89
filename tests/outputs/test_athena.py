"""Athena/Glue DDL: a Delta output's tables registered as Delta tables (their schema read from the log); a Parquet
output's with every column, a Hive type that reads back as the schema's Arrow type."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pytest

from camray.io.schema import ERRORS, RESULTS, RUNS
from camray.outputs.athena import create_table, create_tables

DOCS = Path(__file__).resolve().parents[2] / "docs" / "athena.sql"
EXAMPLE_LOCATION = "s3://my-annotations/cam"
SIMPLE = {
    "string": pa.string(),
    "binary": pa.binary(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
}


def _parse(text: str) -> tuple[pa.DataType, str]:
    """A Hive type at the start of `text` -> (Arrow type, the rest); the inverse mapping, written out apart."""
    if text.startswith("array<"):
        inner, rest = _parse(text[len("array<") :])
        assert rest.startswith(">")
        return pa.list_(inner), rest[1:]
    if text.startswith("struct<"):
        fields, rest = [], text[len("struct<") :]
        while not rest.startswith(">"):
            name, rest = rest.split(":", 1)
            value, rest = _parse(rest)
            fields.append(pa.field(name, value))
            rest = rest.removeprefix(",")
        return pa.struct(fields), rest[1:]
    name = re.match(r"[a-z]+", text).group(0)
    if name == "timestamp":
        return pa.timestamp("us", tz="UTC"), text[len(name) :]
    return SIMPLE[name], text[len(name) :]


def _columns(statement: str) -> list[tuple[str, pa.DataType]]:
    body = statement[statement.index("(\n") + 2 : statement.index("\n)")]
    columns = []
    for line in body.splitlines():
        name, hive = re.match(r"\s*`(\w+)` (.+?),?$", line).groups()
        arrow, rest = _parse(hive)
        assert rest == ""
        columns.append((name, arrow))
    return columns


def _plain(data_type: pa.DataType) -> pa.DataType:
    """Field nullability and metadata are not Hive's to say: compare names and types only."""
    if pa.types.is_list(data_type):
        return pa.list_(_plain(data_type.value_type))
    if pa.types.is_struct(data_type):
        return pa.struct([pa.field(f.name, _plain(f.type)) for f in data_type])
    return data_type


@pytest.mark.parametrize("table", ["results", "errors", "runs"])
def test_delta_ddl_names_the_table_type_and_location_and_no_columns(table):
    statement = create_table(table, "s3://bucket/prefix/")
    assert statement == (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS camray_{table}\nLOCATION 's3://bucket/prefix/{table}/'\n"
        "TBLPROPERTIES ('table_type' = 'DELTA');"
    )


@pytest.mark.parametrize(("table", "schema"), [("results", RESULTS), ("errors", ERRORS), ("runs", RUNS)])
def test_parquet_ddl_columns_match_the_schema(table, schema):
    statement = create_table(table, "s3://bucket/prefix/", delta=False)
    assert statement.startswith(f"CREATE EXTERNAL TABLE IF NOT EXISTS camray_{table} (")
    assert f"LOCATION 's3://bucket/prefix/{table}/'" in statement and "STORED AS PARQUET" in statement
    assert _columns(statement) == [(field.name, _plain(field.type)) for field in schema]


def test_documented_ddl_is_the_generated_one():
    generated = create_tables(EXAMPLE_LOCATION)
    if os.environ.get("CAMRAY_UPDATE_DOCS") == "1":
        DOCS.write_text(generated)
    assert DOCS.read_text() == generated, "docs/athena.sql is stale: run the tests with CAMRAY_UPDATE_DOCS=1"
