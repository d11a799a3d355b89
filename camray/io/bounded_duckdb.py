"""Every DuckDB connection camray opens, in one place: bounded in memory, spilling to a folder of its own.

DuckDB's default working memory is 80 % of the machine's, and without a temporary folder an in-memory database
cannot spill: a join, aggregate or sort over a long history would take the machine or fail. Each caller names the
limit that fits its work (skip-done's anti-join, the tools' newest-row passes, `camray query`), and DuckDB spills
beyond it to the connection's folder. Progress bars stay off: the run and the tools draw their own lines.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a connection is made: the job's driver loads DuckDB only for skip-done
    import duckdb


def connect_bounded(
    memory_limit: str,
    spill_folder: str | None,
    *,
    database: str = ":memory:",
    threads: int | None = None,
    settings: dict[str, Any] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that keeps to `memory_limit` (DuckDB's size text, e.g. `"128MB"`) and spills beyond it
    to `spill_folder` (DuckDB's own `.tmp` in the working folder when None). `database` is a file to hold the
    tables in, or in memory; `threads` caps DuckDB's threads; `settings` are further DuckDB settings."""
    import duckdb

    config: dict[str, Any] = {"memory_limit": memory_limit, **(settings or {})}
    if spill_folder is not None:
        config["temp_directory"] = spill_folder
    if threads is not None:
        config["threads"] = threads
    connection = duckdb.connect(database, config=config)
    connection.execute("SET enable_progress_bar = false")
    return connection


@contextmanager
def bounded_duckdb(
    memory_limit: str,
    *,
    threads: int | None = None,
    on_disk: bool = False,
    settings: dict[str, Any] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """`connect_bounded` in a temporary folder that holds its spill (and, `on_disk`, its database file), closed
    and removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="camray-duckdb-") as folder:
        connection = connect_bounded(
            memory_limit,
            folder,
            database=os.path.join(folder, "tables.duckdb") if on_disk else ":memory:",
            threads=threads,
            settings=settings,
        )
        try:
            yield connection
        finally:
            connection.close()
