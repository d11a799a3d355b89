"""Writing results and errors with a commit, so that a crashed run leaves nothing readers take as complete.

Write tasks put Parquet files under `<output>/_staging/<run_id>/` (readers of `results/*.parquet` never see
a leading-underscore folder, nor do Spark, Hive or Athena). When every input is accounted for, the driver
moves the files into `results/` and `errors/` and only then writes the run's row in `runs/`: a result row
belongs to a completed run exactly when its `run_id` appears in `runs/` with status `succeeded`.

Staged files are what a crashed run keeps: a rerun continues that run (`camray.io.resume`) and skips every
input its staged files hold. So each file is complete or absent (`write_object`: one S3 PutObject, or a local
temporary file renamed into place), and its name is fixed by the run, the attempt and the write task's
index: a write task that Ray retries after its worker died rewrites the same file instead of adding a second
copy of its rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data._internal.execution.interfaces import TaskContext
from ray.data.datasource.datasink import WriteResult

from camray.io.layout import ROW_TABLES, parquet_files, staged_file_name, staging_uri, table_files
from camray.io.schema import ERRORS, RESULTS, ROWS
from camray.io.sources import S3Settings, filesystem_for, is_s3, join_uri, write_object

logger = logging.getLogger(__name__)


@dataclass
class WrittenCounts:
    results: int = 0
    errors: int = 0
    files: list[str] = field(default_factory=list)
    errors_by_stage: Counter[str] = field(default_factory=Counter)
    # (stage, error type) of every error row, and one (image URI, message) of each such kind.
    errors_by_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    error_examples: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    read_retries: int = 0  # S3 retries of the read tasks, carried in the rows' `io_retries`
    write_retries: int = 0  # S3 retries of the staged files' PUTs

    @property
    def io_retries(self) -> int:
        return self.read_retries + self.write_retries

    def add(self, other: WrittenCounts) -> None:
        self.results += other.results
        self.errors += other.errors
        self.files.extend(other.files)
        self.errors_by_stage.update(other.errors_by_stage)
        self.errors_by_kind.update(other.errors_by_kind)
        for kind, example in other.error_examples.items():
            self.error_examples.setdefault(kind, example)
        self.read_retries += other.read_retries
        self.write_retries += other.write_retries


def _parquet_bytes(table: pa.Table) -> bytes:
    """The whole file in memory, to be written in one piece (`write_object`): a file holds at most a write
    task's rows, a few MB of maps."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue().to_pybytes()


class CamDatasink(Datasink[WrittenCounts]):
    """Splits predictor rows into `results/` and `errors/` Parquet files in the run's staging folder."""

    def __init__(
        self, output_uri: str, run_id: str, s3: S3Settings, rows_per_file: int | None = None, attempt: int = 1
    ) -> None:
        self.output_uri = output_uri
        self.run_id = run_id
        self.attempt = attempt
        self.s3 = s3
        self.rows_per_file = rows_per_file
        self.counts = WrittenCounts()

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
        name = staged_file_name(self.run_id, self.attempt, ctx.task_idx)
        for table, kind in ((results, "results"), (errors, "errors")):
            if table.num_rows:
                counts.write_retries += write_object(join_uri(staging, kind, name), _parquet_bytes(table), self.s3)
                counts.files.append(f"{kind}/{name}")
        counts.results, counts.errors = results.num_rows, errors.num_rows
        counts.errors_by_stage.update(errors.column("stage").to_pylist())
        columns = (errors.column(name).to_pylist() for name in ("stage", "error_type", "image_uri", "message"))
        for stage, error_type, uri, message in zip(*columns, strict=True):
            counts.errors_by_kind[(stage, error_type)] += 1
            counts.error_examples.setdefault((stage, error_type), (uri, message))
        counts.read_retries = pc.sum(rows.column("io_retries")).as_py() or 0
        return counts

    def on_write_complete(self, write_result: WriteResult[WrittenCounts]) -> None:
        for item in write_result.write_returns:
            self.counts.add(item)


def staged_files(output_uri: str, run_id: str, s3: S3Settings) -> list[str]:
    """The run's complete staged files, as `results/NAME` and `errors/NAME` (temporary files left out)."""
    fs, staging = filesystem_for(staging_uri(output_uri, run_id), s3)
    return sorted(
        f"{kind}/{path.rsplit('/', 1)[-1]}" for kind in ROW_TABLES for path in parquet_files(fs, f"{staging}/{kind}")
    )


def committed_files(output_uri: str, run_id: str, s3: S3Settings) -> list[str]:
    """Files of `run_id` already moved into `results/` or `errors/` (by a commit that did not finish)."""
    found = []
    for kind in ROW_TABLES:
        names = (path.rsplit("/", 1)[-1] for path in table_files(output_uri, kind, s3)[1])
        found += [f"{kind}/{name}" for name in names if name.startswith(f"{run_id}-")]
    return sorted(found)


def run_files(output_uri: str, run_id: str, s3: S3Settings) -> list[str]:
    """Every file of the run, staged or already committed, as paths on the output's filesystem: what resume
    reads back and what the commit checks."""
    _, out = filesystem_for(output_uri, s3)
    _, staging = filesystem_for(staging_uri(output_uri, run_id), s3)
    return [f"{staging}/{name}" for name in staged_files(output_uri, run_id, s3)] + [
        f"{out}/{name}" for name in committed_files(output_uri, run_id, s3)
    ]


def check_each_input_once(output_uri: str, run_id: str, s3: S3Settings) -> int:
    """Counts the run's rows, staged or committed; raises if any input appears twice (then nothing is committed)."""
    fs, _ = filesystem_for(output_uri, s3)
    paths = run_files(output_uri, run_id, s3)
    if not paths:
        return 0
    uris = pa.chunked_array(
        [pq.read_table(path, filesystem=fs, columns=["image_uri"]).column(0) for path in paths], type=pa.string()
    )
    distinct = pc.count_distinct(uris).as_py()
    if distinct != len(uris):
        counts = pc.value_counts(uris)
        twice = [item["values"] for item in counts.to_pylist() if item["counts"] > 1][:5]
        raise RuntimeError(
            f"run {run_id} holds {len(uris) - distinct} duplicate rows (for example {twice}); nothing was committed"
        )
    return len(uris)


def commit(output_uri: str, run_id: str, s3: S3Settings) -> list[str]:
    """Moves every staged file of the run into place (`results/`, `errors/`), then removes its staging folder."""
    fs, staging = filesystem_for(staging_uri(output_uri, run_id), s3)
    _, out = filesystem_for(output_uri, s3)
    moved = staged_files(output_uri, run_id, s3)
    for kind in {relative.split("/", 1)[0] for relative in moved}:
        fs.create_dir(f"{out}/{kind}", recursive=True)
    for relative in moved:
        fs.move(f"{staging}/{relative}", f"{out}/{relative}")
    discard_staging(output_uri, run_id, s3)
    return sorted(set(moved) | set(committed_files(output_uri, run_id, s3)))


def discard_staging(output_uri: str, run_id: str, s3: S3Settings) -> None:
    fs, staging = filesystem_for(staging_uri(output_uri, run_id), s3)
    if is_s3(output_uri) or fs.get_file_info(staging).type == pafs.FileType.Directory:
        fs.delete_dir_contents(staging, missing_dir_ok=True)
        if not is_s3(output_uri):
            fs.delete_dir(staging)
