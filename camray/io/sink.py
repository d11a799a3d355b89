"""The write tasks' side of a run: its rows split into `results` and `errors` Parquet files where its output's
format stages them (a Delta table's own folder, or a Parquet output's `_staging/<run_id>/`), none visible to
readers until the run's commit (`TableFormat.commit`).

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
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data._internal.execution.interfaces import TaskContext
from ray.data.datasource.datasink import WriteResult

from camray.io.layout import staged_file_name
from camray.io.schema import ERRORS, RESULTS, ROWS
from camray.io.sources import S3Settings, join_uri, write_object

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
    """Splits predictor rows into `results` and `errors` Parquet files, in `folders[table]` (URIs)."""

    def __init__(
        self,
        folders: dict[str, str],
        run_id: str,
        s3: S3Settings,
        rows_per_file: int | None = None,
        attempt: int = 1,
    ) -> None:
        self.folders = folders
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
        name = staged_file_name(self.run_id, self.attempt, ctx.task_idx)
        for table, kind in ((results, "results"), (errors, "errors")):
            if table.num_rows:
                counts.write_retries += write_object(join_uri(self.folders[kind], name), _parquet_bytes(table), self.s3)
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
