"""What readers see of an output, read as docs/output.md says, by other code than camray's own readers: a Delta
output's current version through `deltalake`, with no join; a Parquet output's rows of runs whose status is
`succeeded`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from camray.io.schema import RUNS
from camray.io.sources import S3Settings, filesystem_for, join_uri


def _storage_options(uri: str) -> dict[str, str]:
    """delta-rs's options for the moto server the session points the AWS chain at."""
    if not uri.startswith("s3://"):
        return {}
    import os

    return {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}


def delta_rows(output: str | Path, kind: str, columns: list[str] | None = None, version: int | None = None):
    """The rows of the Delta table's current version (or `version`), through `deltalake`; None for no such table."""
    from deltalake import DeltaTable

    uri = join_uri(str(output), kind)
    if not DeltaTable.is_deltatable(uri, _storage_options(uri)):
        return None
    table = DeltaTable(uri, version=version, storage_options=_storage_options(uri))
    return table.to_pyarrow_table(columns=columns)


def is_delta(output: str | Path) -> bool:
    from deltalake import DeltaTable

    uri = join_uri(str(output), "runs")
    return DeltaTable.is_deltatable(uri, _storage_options(uri))


def _table(output: str | Path, kind: str, schema=None):
    fs, path = filesystem_for(join_uri(str(output), kind), S3Settings())
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    return pads.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table()


def runs(output: str | Path) -> list[dict]:
    table = delta_rows(output, "runs") if is_delta(output) else _table(output, "runs", RUNS)
    return [] if table is None else table.to_pylist()


def succeeded_inputs(output: str | Path) -> Counter[str]:
    """How many times each input appears among the current rows of results and errors: a Delta table's current
    version, or a Parquet output's rows of succeeded runs."""
    seen: Counter[str] = Counter()
    if is_delta(output):
        for kind in ("results", "errors"):
            table = delta_rows(output, kind, ["image_uri"])
            if table is not None:
                seen.update(table.column("image_uri").to_pylist())
        return seen
    succeeded = {run["run_id"] for run in runs(output) if run["status"] == "succeeded"}
    for kind in ("results", "errors"):
        table = _table(output, kind)
        if table is not None:
            seen.update(
                row["image_uri"]
                for row in table.select(["image_uri", "run_id"]).to_pylist()
                if row["run_id"] in succeeded
            )
    return seen
