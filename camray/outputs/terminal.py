"""Arrow tables as aligned text for a terminal: one line per row, long cells cut, nested values inline."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pyarrow as pa

MAX_CELL = 40


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, list):
        return "[" + ", ".join(_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_text(item)}" for key, item in value.items()) + "}"
    return str(value)


def _cut(text: str, width: int) -> str:
    """Cut in the middle: a URI keeps its file name, a label its start."""
    text = text.replace("\n", " ")
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def format_table(table: pa.Table, more_rows: bool = False, max_cell: int = MAX_CELL) -> str:
    """`table` as a header, a rule and one line per row; `more_rows` adds a line saying rows were left out."""
    names = table.column_names
    rows = [[_cut(_text(value), max_cell) for value in row.values()] for row in table.to_pylist()]
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), "  ".join("-" * width for width in widths)]
    out += [line(row) for row in rows]
    footer = f"({len(rows)} row{'s' if len(rows) != 1 else ''}{', more not shown' if more_rows else ''})"
    return "\n".join([*out, footer])
