"""Athena / Glue `CREATE EXTERNAL TABLE` statements for an output's tables.

A Delta output's tables are registered as Delta tables (`TBLPROPERTIES ('table_type' = 'DELTA')`): Athena reads
their schema and their current version from the log, one row per image, no join. A Parquet output's are plain
external tables, their columns generated from `camray.io.schema` (Arrow types mapped to Hive types: `int32` ->
`int`, `list<...>` -> `array<...>`, `struct` -> `struct<name:type,...>`, timestamps -> `timestamp`); Athena reads
every file under such a location, also those of failed or incomplete runs: join on `runs.status = 'succeeded'`.
"""

from __future__ import annotations

import pyarrow as pa

from camray.io.layout import TABLES
from camray.io.schema import SCHEMA_VERSION


def hive_type(arrow_type: pa.DataType) -> str:
    """The Hive (Athena, Glue) type of an Arrow type the schema uses."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "binary"
    simple = {pa.int8(): "tinyint", pa.int16(): "smallint", pa.int32(): "int", pa.int64(): "bigint"}
    simple.update({pa.float32(): "float", pa.float64(): "double", pa.bool_(): "boolean"})
    if arrow_type in simple:
        return simple[arrow_type]
    if pa.types.is_timestamp(arrow_type):
        return "timestamp"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"array<{hive_type(arrow_type.value_type)}>"
    if pa.types.is_struct(arrow_type):
        fields = ",".join(f"{field.name}:{hive_type(field.type)}" for field in arrow_type)
        return f"struct<{fields}>"
    raise TypeError(f"no Hive type for Arrow type {arrow_type}")


def create_table(table: str, location: str, prefix: str = "camray_", delta: bool = True) -> str:
    """The statement for one table (`results`, `errors`, `runs`) of the output at `location` (`s3://...`)."""
    if table not in TABLES:
        raise ValueError(f"`table` must be one of {sorted(TABLES)}, not {table!r}")
    where = f"LOCATION '{location.rstrip('/')}/{table}/'"
    if delta:
        return f"CREATE EXTERNAL TABLE IF NOT EXISTS {prefix}{table}\n{where}\nTBLPROPERTIES ('table_type' = 'DELTA');"
    columns = ",\n".join(f"  `{field.name}` {hive_type(field.type)}" for field in TABLES[table])
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {prefix}{table} (\n{columns}\n)\nSTORED AS PARQUET\n{where}\n"
        f"TBLPROPERTIES ('camray.schema_version' = '{SCHEMA_VERSION}');"
    )


def create_tables(location: str, prefix: str = "camray_", delta: bool = True) -> str:
    """The statements for every table of the output at `location`, separated by blank lines."""
    return "\n\n".join(create_table(table, location, prefix, delta) for table in TABLES) + "\n"
