"""Writing results and errors with a commit, so that a crashed run leaves nothing readers take as complete.

Write tasks put Parquet files under `<output>/_staging/<run_id>/` (readers of `results/*.parquet` never see
a leading-underscore folder, nor do Spark, Hive or Athena). When every write task has finished, the driver
moves the files into `results/` and `errors/` and only then writes the run's row in `runs/`: a result row
belongs to a completed run exactly when its `run_id` appears in `runs/` with status `succeeded`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data._internal.execution.interfaces import TaskContext
from ray.data.datasource.datasink import WriteResult

from pipeline.io.schema import ERRORS, RESULTS, ROWS
from pipeline.io.sources import S3Settings, filesystem_for, join_uri, write_object

logger = logging.getLogger(__name__)


@dataclass
class WrittenCounts:
    results: int = 0
    errors: int = 0
    files: list[str] = field(default_factory=list)
    read_retries: int = 0  # S3 retries of the read tasks, carried in the rows' `io_retries`
    write_retries: int = 0  # S3 retries of the staged files' PUTs

    @property
    def io_retries(self) -> int:
        return self.read_retries + self.write_retries


def staging_uri(output_uri: str, run_id: str) -> str:
    return join_uri(output_uri, "_staging", run_id)


class CamDatasink(Datasink[WrittenCounts]):
    """Splits predictor rows into `results/` and `errors/` Parquet files in the run's staging folder."""

    def __init__(self, output_uri: str, run_id: str, s3: S3Settings, rows_per_file: int | None = None) -> None:
        self.output_uri = output_uri
        self.run_id = run_id
        self.s3 = s3
        self.rows_per_file = rows_per_file
        self.counts = WrittenCounts()
        self.failed: Exception | None = None

    @property
    def min_rows_per_write(self) -> int | None:
        return self.rows_per_file

    def write(self, blocks: Iterable[pa.Table], ctx: TaskContext) -> WrittenCounts:
        tables = [block for block in blocks if block.num_rows]
        counts = WrittenCounts()
        if not tables:
            return counts
        rows = pa.concat_tables([table.select(ROWS.names).cast(ROWS) for table in tables])
        failed = pc.is_valid(rows.column("error_type"))
        results = rows.filter(pc.invert(failed)).select(RESULTS.names).cast(RESULTS)
        errors = rows.filter(failed).select(ERRORS.names).cast(ERRORS)
        staging = staging_uri(self.output_uri, self.run_id)
        name = f"{self.run_id}-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
        for table, kind in ((results, "results"), (errors, "errors")):
            if table.num_rows:
                counts.write_retries += write_object(join_uri(staging, kind, name), _parquet_bytes(table), self.s3)
                counts.files.append(f"{kind}/{name}")
        counts.results, counts.errors = results.num_rows, errors.num_rows
        counts.read_retries = pc.sum(rows.column("io_retries")).as_py() or 0
        return counts

    def on_write_complete(self, write_result: WriteResult[WrittenCounts]) -> None:
        for item in write_result.write_returns:
            self.counts.results += item.results
            self.counts.errors += item.errors
            self.counts.files.extend(item.files)
            self.counts.read_retries += item.read_retries
            self.counts.write_retries += item.write_retries

    def on_write_failed(self, error: Exception) -> None:
        self.failed = error


def _parquet_bytes(table: pa.Table) -> bytes:
    """The whole file in memory, to be written in one piece (`write_object`): a file holds at most a write
    task's rows, a few MB of maps."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue().to_pybytes()


def commit(output_uri: str, run_id: str, files: list[str], s3: S3Settings) -> None:
    """Moves a run's staged files into place (`results/`, `errors/`) and removes its staging folder."""
    fs, staging = filesystem_for(staging_uri(output_uri, run_id), s3)
    _, out = filesystem_for(output_uri, s3)
    for relative in files:
        kind = relative.split("/", 1)[0]
        fs.create_dir(f"{out}/{kind}", recursive=True)
        fs.move(f"{staging}/{relative}", f"{out}/{relative}")
    discard_staging(output_uri, run_id, s3)


def discard_staging(output_uri: str, run_id: str, s3: S3Settings) -> None:
    fs, staging = filesystem_for(staging_uri(output_uri, run_id), s3)
    if fs.get_file_info(staging).type == pafs.FileType.Directory:
        fs.delete_dir(staging)
