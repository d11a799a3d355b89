"""What readers see of an output, read as docs/output.md says: rows of runs whose status is `succeeded`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from camray.io.schema import RUNS
from camray.io.sources import S3Settings, filesystem_for, join_uri


def _table(output: str | Path, kind: str, schema=None):
    fs, path = filesystem_for(join_uri(str(output), kind), S3Settings())
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    return pads.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table()


def runs(output: str | Path) -> list[dict]:
    table = _table(output, "runs", RUNS)
    return [] if table is None else table.to_pylist()


def succeeded_inputs(output: str | Path) -> Counter[str]:
    """How many times each input appears among the results and errors of succeeded runs."""
    succeeded = {run["run_id"] for run in runs(output) if run["status"] == "succeeded"}
    seen: Counter[str] = Counter()
    for kind in ("results", "errors"):
        table = _table(output, kind)
        if table is not None:
            seen.update(
                row["image_uri"]
                for row in table.select(["image_uri", "run_id"]).to_pylist()
                if row["run_id"] in succeeded
            )
    return seen
