"""Reading an output's tables (`results/`, `errors/`, `runs/`), local or `s3://`, for the users' tools.

`runs/` holds one small file per run, written by every version of the job: its files are all inspected and
their schemas unified with the current `RUNS` (columns a file lacks read as null, columns this version does
not know are kept). `results/` and `errors/` are large: they are read with the current schema unified with
one file's, which is enough because their columns only ever grow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from camray.io.schema import ERRORS, RESULTS, RUNS
from camray.io.sources import S3Settings, filesystem_for, join_uri

TABLES = {"results": RESULTS, "errors": ERRORS, "runs": RUNS}


class OutputNotFound(FileNotFoundError):
    """The output URI holds no camray tables."""


@dataclass(frozen=True)
class Output:
    """An output location and how to reach it."""

    uri: str
    s3: S3Settings = S3Settings()

    def dataset(self, table: str) -> pads.Dataset:
        """The whole table as a pyarrow dataset (empty, with the current schema, when the folder is absent)."""
        if table not in TABLES:
            raise ValueError(f"`table` must be one of {sorted(TABLES)}, not {table!r}")
        fs, path = filesystem_for(join_uri(self.uri, table), self.s3)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return pads.dataset(TABLES[table].empty_table())
        factory = pads.FileSystemDatasetFactory(
            fs,
            pafs.FileSelector(path, recursive=True),
            pads.ParquetFileFormat(),
            pads.FileSystemFactoryOptions(selector_ignore_prefixes=[".", "_"]),
        )
        inspected = factory.inspect(fragments=None if table == "runs" else 1, promote_options="permissive")
        schema = pa.unify_schemas([TABLES[table], inspected], promote_options="permissive")
        return factory.finish(schema)

    def check_exists(self) -> None:
        fs, path = filesystem_for(join_uri(self.uri, "runs"), self.s3)
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            raise OutputNotFound(f"{self.uri} has no runs/ table: not a camray output, or no job has finished there")

    def runs(self) -> pa.Table:
        """Every run, newest first."""
        table = self.dataset("runs").to_table()
        if table.num_rows == 0:
            return table
        return table.sort_by([("started_at", "descending"), ("run_id", "descending")])

    def succeeded_run_ids(self) -> list[str]:
        runs = self.dataset("runs").to_table(columns=["run_id", "status"])
        return runs.filter(pc.equal(runs.column("status"), "succeeded")).column("run_id").to_pylist()

    def pick_run(self, run_id: str | None) -> dict:
        """The named run, or the newest succeeded one, or (none succeeded) the newest of any status."""
        self.check_exists()
        runs = self.runs().to_pylist()
        if run_id is not None:
            for run in runs:
                if run["run_id"] == run_id:
                    return run
            raise LookupError(f"run {run_id!r} is not in {self.uri}/runs; `camray runs --output {self.uri}` lists them")
        if not runs:
            raise OutputNotFound(f"{self.uri}/runs holds no run")
        return next((run for run in runs if run["status"] == "succeeded"), runs[0])

    def table(
        self,
        table: str,
        run_ids: Sequence[str] | None,
        columns: list[str] | None = None,
        extra_filter: pads.Expression | None = None,
    ) -> pa.Table:
        """Rows of `table` from `run_ids` (all runs when None), the filter pushed down to the Parquet scan."""
        expression = None if run_ids is None else pads.field("run_id").isin(list(run_ids))
        if extra_filter is not None:
            expression = extra_filter if expression is None else expression & extra_filter
        return self.dataset(table).to_table(columns=columns, filter=expression)

    def latest_results(self, run_id: str | None, columns: list[str] | None = None) -> pa.Table:
        """Results of one run, or, without a run, the newest succeeded row of every image across succeeded runs
        (non-incremental reruns write an image again)."""
        if run_id is not None:
            return self.table("results", [run_id], columns)
        runs = self.runs()
        succeeded = runs.filter(pc.equal(runs.column("status"), "succeeded"))
        order = {run: index for index, run in enumerate(succeeded.column("run_id").to_pylist())}  # newest first
        wanted = None if columns is None else list(dict.fromkeys([*columns, "image_uri", "run_id"]))
        table = self.table("results", list(order), wanted)
        if table.num_rows == 0:
            return table if columns is None else table.select(columns)
        rank = pa.array([order[run] for run in table.column("run_id").to_pylist()], pa.int64())
        table = table.append_column("_rank", rank).sort_by([("image_uri", "ascending"), ("_rank", "ascending")])
        uris = table.column("image_uri")
        keep = pc.invert(pc.equal(uris.slice(1), uris.slice(0, len(uris) - 1))) if len(uris) > 1 else None
        mask = pa.concat_arrays([pa.array([True]), keep.combine_chunks()]) if keep is not None else pa.array([True])
        table = table.filter(mask).drop_columns(["_rank"])
        return table if columns is None else table.select(columns)
