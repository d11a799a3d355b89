"""Compaction benchmark: `python -m camray.bench.compaction [--nights 30] [--images-per-night 20000]`.

What do a month of small nightly files cost the readers, and what does `camray optimize` give back? A Delta output
is fabricated as nightly runs leave it (`bench.history.fabricate_history`: each night one commit of its write
tasks' files, `--rows-per-file` rows each), then read, before and after `camray optimize` compacts it:
- the skip-done step's history read (`done.DoneSet`: `image_uri`, `source_version` of every current row of the
  job's model and settings), the read every night's run makes;
- `camray query`'s `SELECT model, count(*) FROM results GROUP BY model` (DuckDB over the files the log names),
  the read a user makes.
Each read is timed in this process, best of `--repeats`, the log loaded afresh each time. Prints a table and
writes `bench-compaction-results.json`. Absolute numbers vary by machine; the ratio is the point.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from camray.bench.history import fabricate_history
from camray.io.done import DoneSet
from camray.io.optimize import optimize
from camray.io.output import Output
from camray.outputs.query import connect

MODEL, FINGERPRINT = "efficientnet_lite0", "bench-compaction"
QUERY = "SELECT model, count(*) AS rows FROM results GROUP BY model"


def _best(read: Callable[[], int], repeats: int) -> tuple[float, int]:
    """The fastest of `repeats` timed reads, and the rows the read returned."""
    best, rows = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = read()
        best = min(best, time.perf_counter() - started)
    return best, rows


def _skip_history(uri: str) -> int:
    done = DoneSet.of(Output(uri), MODEL, FINGERPRINT)
    return sum(batch.num_rows for batch in done.batches())


def _query(uri: str) -> int:
    con = connect(uri)
    try:
        ((_, rows),) = con.sql(QUERY).fetchall()
    finally:
        con.close()
    return rows


def measure(uri: str, repeats: int) -> dict[str, float | int]:
    files = len(Output(uri).files("results"))
    skip_s, skip_rows = _best(lambda: _skip_history(uri), repeats)
    query_s, query_rows = _best(lambda: _query(uri), repeats)
    if skip_rows != query_rows:
        raise RuntimeError(f"the skip read {skip_rows} rows, the query counted {query_rows}")
    return {"files": files, "rows": skip_rows, "skip_history_s": skip_s, "query_s": query_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--images-per-night", type=int, default=20_000)
    parser.add_argument("--rows-per-file", type=int, default=500, help="a night's write tasks' files")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="bench-compaction-results.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="camray-bench-compaction-") as folder:
        out = Path(folder) / "out"
        rows = args.nights * args.images_per_night
        fabricate_history(out, rows, [], MODEL, FINGERPRINT, rows_per_file=args.rows_per_file, runs=args.nights)
        nightly = measure(str(out), args.repeats)
        started = time.perf_counter()
        upkeep = optimize(Output(str(out)), retention_hours=0)
        optimize_s = time.perf_counter() - started
        compacted = measure(str(out), args.repeats)
    report = {
        "host": {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": _cpus()},
        "nights": args.nights,
        "images_per_night": args.images_per_night,
        "rows_per_file": args.rows_per_file,
        "nightly": nightly,
        "compacted": compacted,
        "optimize_s": optimize_s,
        "optimize": upkeep.summary(),
    }
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.nights} nights x {args.images_per_night:,} images, files of {args.rows_per_file} rows")
    print(f"{'':>10} {'files':>7} {'rows':>11} {'skip-done read':>15} {'query':>8}")
    for name, case in (("nightly", nightly), ("compacted", compacted)):
        print(
            f"{name:>10} {case['files']:>7,} {case['rows']:>11,} {case['skip_history_s']:>14.2f}s"
            f" {case['query_s']:>7.2f}s"
        )
    print(f"camray optimize: {optimize_s:.1f} s ({upkeep.summary()})")
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    raise SystemExit(main())
