"""A run's inputs, loaded once into DuckDB at its commit: checked to appear once, and matched against the rows the
run supersedes.

The run's rows are read back file by file (`TableFormat.run_rows`: `image_uri` and `container_uri`) into a table
of a DuckDB database file in a temporary folder, so that a run of millions of images is checked and matched with
the driver's memory bounded (`MEMORY_LIMIT`, spilling beyond it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyarrow as pa

from camray.io.bounded_duckdb import bounded_duckdb

if TYPE_CHECKING:
    import duckdb

    from camray.io.table_format import RunRows

MEMORY_LIMIT = "128MB"
MAX_THREADS = 4
KEY_COLUMNS = {"results": ["image_uri", "container_uri"], "errors": ["image_uri", "container_uri"]}
# Duplicates named in the error, at most.
NAMED = 5


class DuplicateRows(RuntimeError):
    """An input appears more than once among a run's rows: nothing is committed."""


@contextmanager
def run_keys(run_id: str, rows: Iterable[RunRows]) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection holding `keys(image_uri, container_uri)`, one row per row of the run, checked to
    name each input once (`DuplicateRows` otherwise)."""
    threads = min(MAX_THREADS, os.cpu_count() or 1)
    settings = {"preserve_insertion_order": False}
    with bounded_duckdb(MEMORY_LIMIT, threads=threads, on_disk=True, settings=settings) as con:
        con.execute("CREATE TABLE keys (image_uri VARCHAR, container_uri VARCHAR)")
        for item in rows:
            chunk = pa.table(
                {
                    "image_uri": item.rows.column("image_uri").cast(pa.string()),
                    "container_uri": (
                        item.rows.column("container_uri").cast(pa.string())
                        if "container_uri" in item.rows.column_names
                        else pa.nulls(item.rows.num_rows, pa.string())
                    ),
                }
            )
            con.register("chunk", chunk)
            con.execute("INSERT INTO keys SELECT * FROM chunk")
            con.unregister("chunk")
        twice = con.execute(
            f"SELECT image_uri, count(*) - 1 FROM keys GROUP BY image_uri HAVING count(*) > 1 ORDER BY image_uri "
            f"LIMIT {NAMED}"
        ).fetchall()
        if twice:
            ((extra,),) = con.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM keys GROUP BY image_uri HAVING n > 1)"
            ).fetchall()
            raise DuplicateRows(
                f"run {run_id} holds {extra} duplicate rows (for example {[uri for uri, _ in twice]}); "
                "nothing was committed"
            )
        yield con


def count_keys(con: duckdb.DuckDBPyConnection) -> int:
    ((count,),) = con.execute("SELECT count(*) FROM keys").fetchall()
    return count
