"""Every DuckDB connection of camray is opened by `camray.io.bounded_duckdb`: bounded in memory, spilling to a
folder of its own, whatever the caller (skip-done, the tools' newest rows, `camray query`, the CLI's CSV)."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from camray.io.bounded_duckdb import connect_bounded
from camray.io.schema import RUNS

PACKAGE = Path(__file__).resolve().parents[2] / "camray"
HELPER = PACKAGE / "io" / "bounded_duckdb.py"


def _connects(path: Path) -> list[int]:
    """Lines of `path` that call `duckdb.connect` (or `connect` imported from duckdb)."""
    tree = ast.parse(path.read_text())
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "duckdb"
        for alias in node.names
        if alias.name == "connect"
    }
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        through_module = (
            isinstance(function, ast.Attribute)
            and function.attr == "connect"
            and isinstance(function.value, ast.Name)
            and function.value.id == "duckdb"
        )
        if through_module or (isinstance(function, ast.Name) and function.id in imported):
            lines.append(node.lineno)
    return lines


def test_only_the_helper_connects_to_duckdb():
    """The benchmarks (`camray/bench/`) check the product from outside it and keep their own connections."""
    product = [path for path in PACKAGE.rglob("*.py") if "bench" not in path.relative_to(PACKAGE).parts]
    elsewhere = {str(path.relative_to(PACKAGE)): _connects(path) for path in product if path != HELPER}
    assert {path: lines for path, lines in elsewhere.items() if lines} == {}
    assert _connects(HELPER)


def test_a_connection_keeps_to_its_limit_and_spills_to_its_folder(tmp_path):
    spill = tmp_path / "spill"
    connection = connect_bounded("32MB", str(spill), threads=1)
    try:
        limit, folder, threads = connection.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory'), current_setting('threads')"
        ).fetchone()
        assert (limit, folder, threads) == ("30.5 MiB", str(spill), 1)
        # A sort of ~130 MB of rows: it completes within 32 MB only by spilling to the folder.
        ordered = connection.execute(
            "SELECT count(*), min(h), max(h) FROM (SELECT md5(i::VARCHAR) || md5(i::VARCHAR) AS h "
            "FROM range(2000000) t(i) ORDER BY h)"
        ).fetchone()
        assert ordered[0] == 2_000_000
    finally:
        connection.close()


def test_query_connections_are_bounded(tmp_path):
    from camray.outputs.query import QUERY_MEMORY_LIMIT, connect

    (tmp_path / "runs").mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=RUNS), tmp_path / "runs" / "r.parquet")
    connection = connect(str(tmp_path), spill_folder=str(tmp_path / "spill"))
    try:
        limit, folder = connection.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchone()
    finally:
        connection.close()
    assert QUERY_MEMORY_LIMIT == "256MB" and limit == "244.1 MiB" and folder == str(tmp_path / "spill")
