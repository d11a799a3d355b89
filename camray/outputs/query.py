"""`camray query`: DuckDB over an output's tables, local or `s3://`, with no DuckDB extension.

`connect(output)` returns a DuckDB connection with these views:
- `results`, `errors`, `runs`: the tables' current rows: a Delta table's current version (one row per image), or
  a Parquet output's rows of succeeded runs; `runs` holds the succeeded runs (`all_runs=True`: every attempt,
  and in a Parquet output every row of `results` and `errors`, failed runs' included);
- `predictions`: one row per image and top-k class (`image_uri`, `run_id`, `model`, `rank`, `class_id`,
  `label`, `score`);
- `boxes`: one row per box (`image_uri`, `run_id`, `width`, `height`, `rank`, `class_id`, `label`,
  `score`, `x0`, `y0`, `x1`, `y1`: pixel-edge coordinates in original pixels);
- `labels`: one row per image and given label (`image_uri`, `run_id`, `model`, `class_id`, `label`); none for
  images without labels, and for outputs written before labels existed;
- `masks`: one row per image and class of its label map (`image_uri`, `run_id`, `width`, `height`, `rank` (the
  class's position among the image's kept classes), `class_id`, `label`, `size`, `counts`: COCO RLE); none for
  outputs written before label maps.

`results` and `errors` are read by DuckDB's own Parquet reader, file by file (the files the Delta log names, or a
Parquet output's table files), so a query's memory does not grow with the number of files (a pyarrow dataset keeps
the footer of every file it has read, about 75 KB a results file: docs/incremental.md). S3 is reached through
pyarrow's S3 filesystem, the job's, handed to DuckDB as an fsspec filesystem: DuckDB's `httpfs` and `delta`
extensions, downloaded at run time, are not needed. Files written by different camray versions have different
columns; the files are grouped by their schema (DuckDB reads each footer once and lets it go), each group read as
one, and the groups joined by column name over the current schema, so a column a file lacks reads as null. `runs`,
one small file an attempt, is read whole with every version's columns.
"""

from __future__ import annotations

import duckdb
import pyarrow.compute as pc
import pyarrow.fs as pafs

from camray.io.bounded_duckdb import connect_bounded
from camray.io.layout import SUCCEEDED, TABLES
from camray.io.output import Output

VIEWS = (*TABLES, "predictions", "boxes", "labels", "masks")
# DuckDB's working memory for a query (its default is 80% of the machine's); a query's joins, aggregates and
# sorts spill to disk beyond it, so one over a long history does not take the machine.
QUERY_MEMORY_LIMIT = "256MB"

_DERIVED = {
    "predictions": """
        SELECT image_uri, run_id, model, generate_subscripts(predictions, 1) AS rank,
               unnest(predictions, recursive := true)
        FROM results""",
    "boxes": """
        SELECT image_uri, run_id, width, height, generate_subscripts(boxes, 1) AS rank,
               unnest(boxes, recursive := true)
        FROM results""",
    "labels": """
        SELECT image_uri, run_id, model, unnest(labels, recursive := true)
        FROM results""",
    "masks": """
        SELECT image_uri, run_id, width, height, generate_subscripts(masks, 1) AS rank,
               unnest(masks, recursive := true)
        FROM results""",
}


def connect(
    output: Output | str,
    all_runs: bool = False,
    memory_limit: str = QUERY_MEMORY_LIMIT,
    spill_folder: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views of this module's docstring over `output` (an `Output`, or a
    URI reached with the default S3 settings: the AWS chain and `AWS_ENDPOINT_URL`). DuckDB keeps to
    `memory_limit` and spills beyond it to `spill_folder` (DuckDB's own `.tmp` in the working folder when None)."""
    if isinstance(output, str):
        output = Output(output)
    if not isinstance(output, Output):
        raise TypeError(f"`output` must be an Output or a URI, not {type(output).__name__}")
    output.check_exists()
    con = connect_bounded(memory_limit, spill_folder)
    runs = output.runs()
    if not all_runs:
        runs = runs.filter(pc.field("status") == SUCCEEDED)
    con.register("_runs", runs)
    for name in ("results", "errors"):
        source = _parquet_source(con, output, name)
        # A Delta table's current version holds only committed rows; a Parquet output's rows are joined on runs.
        joined = not (all_runs or output.is_delta)
        where = " WHERE run_id IN (SELECT run_id FROM _runs)" if joined else ""
        con.execute(f"CREATE VIEW _{name} AS SELECT * FROM ({source}){where}")
    for name in TABLES:
        # Views over the private names: a view can be selected from and joined like a table, and the derived
        # views below refer to the restricted rows.
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}")
    for name, sql in _DERIVED.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


def _s3_files(filesystem: pafs.S3FileSystem):
    """pyarrow's S3 filesystem as an fsspec one that DuckDB reads `s3://` paths through."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class S3Files(ArrowFSWrapper):
        protocol = "s3"

    return S3Files(filesystem)


def _parquet_source(con: duckdb.DuckDBPyConnection, output: Output, table: str) -> str:
    """SQL of every current row of `table`'s files, read by DuckDB's Parquet reader, the current schema's columns
    first and in order (the module's docstring). Registers on `con` what it refers to."""
    con.register(f"_{table}_schema", TABLES[table].empty_table())
    files = output.files(table)
    if not files:
        return f"SELECT * FROM _{table}_schema"
    if isinstance(output.store.fs, pafs.S3FileSystem):
        if "s3" not in con.list_filesystems():
            con.register_filesystem(_s3_files(output.store.fs))
        files = [f"s3://{path}" for path in files]
    con.execute(f"SET VARIABLE _{table}_files = ?", [files])
    groups = con.execute(
        f"""
        SELECT list(file_name ORDER BY file_name) FROM (
            SELECT file_name, string_agg(name || ' ' || coalesce(type, '') || ' ' || coalesce(num_children, 0),
                                         ',' ORDER BY name, type, num_children) AS signature
            FROM parquet_schema(getvariable('_{table}_files')) GROUP BY file_name
        ) GROUP BY signature ORDER BY min(file_name)
        """
    ).fetchall()
    parts = [f"SELECT * FROM _{table}_schema"]
    for index, (group,) in enumerate(groups):
        con.execute(f"SET VARIABLE _{table}_files_{index} = ?", [group])
        parts.append(f"SELECT * FROM read_parquet(getvariable('_{table}_files_{index}'))")
    return " UNION ALL BY NAME ".join(parts)
