"""The output's layout, in one place: what lives where under an output URI, and how its runs are read.

```
<output>/
  results/  errors/  runs/           the tables (`TABLES`), the only Parquet readers see
  _lease.json                        the lease of the run writing here (`camray.io.lease`)
  _staging/<run_id>/                 a run's staged files and its `run.json` until it commits (`io.sink`, `io.resume`)
  _staging/<run_id>/tallies/         what each read task of shards or tables read (`io.container_staging`)
  _listing/<run_id>-aNN/             an attempt's inputs for its read tasks, removed when the attempt ends
  _logs/<run_id>-aNN-stats.txt       Ray Data's statistics of an attempt, linked from its runs row
  _logs/<run_id>-aNN-log.txt         the attempt's log: camray's lines and Ray's, kept off the terminal
```
Readers of `*/**.parquet` skip the underscore entries, as Spark, Hive and Athena do. A run has one id over all
its attempts; `-aNN` names what belongs to attempt NN. Runs rows are named `<run_id>.parquet` for a first attempt
and `<run_id>-aNN.parquet` after it, so an attempt never overwrites the row of an earlier one.

A table's files are found in one place, `table_files`: its Parquet files at any depth, hidden and underscore
entries left out. Every reader of the tables (the runner's check of what is done, resume, the users' tools) reads
those, most through `table_dataset`: each `runs/` file is inspected and the schemas unified with the current `RUNS`
(columns a file lacks read as null, columns this version does not know are kept); `results/` and `errors/` are
large and read with the current schema unified with one file's, enough because their columns only ever grow.

A reader that passes over a whole table streams it with `stream_files`, a few files at a time: one pyarrow dataset
keeps the Parquet footer of every file it has read until it is dropped (about 0.1 MB a results file), so one
dataset over a year of nightly files would hold gigabytes by the end of its scan.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from camray.io.schema import ERRORS, RESULTS, RUNS
from camray.io.sources import S3Settings, filesystem_for, join_uri

TABLES: dict[str, pa.Schema] = {"results": RESULTS, "errors": ERRORS, "runs": RUNS}
# The tables the write tasks fill; `runs/` is written by the driver, one row per attempt.
ROW_TABLES = ("results", "errors")

LEASE_NAME = "_lease.json"
STAGING_FOLDER = "_staging"
LISTING_FOLDER = "_listing"
LOGS_FOLDER = "_logs"
STATE_NAME = "run.json"
TALLIES_FOLDER = "tallies"

SUCCEEDED = "succeeded"

# Files read together as one pyarrow dataset by `stream_files`, and files of one such dataset read ahead: their
# footers are held while they are read, and a file read ahead holds its decoded rows.
FILES_PER_SCAN = 16
FILES_READ_AHEAD = 2


def attempt_name(run_id: str, attempt: int) -> str:
    return f"{run_id}-a{attempt:02d}"


def table_uri(output_uri: str, table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"`table` must be one of {sorted(TABLES)}, not {table!r}")
    return join_uri(output_uri, table)


def lease_uri(output_uri: str) -> str:
    return join_uri(output_uri, LEASE_NAME)


def staging_root(output_uri: str) -> str:
    return join_uri(output_uri, STAGING_FOLDER)


def staging_uri(output_uri: str, run_id: str) -> str:
    return join_uri(output_uri, STAGING_FOLDER, run_id)


def state_uri(output_uri: str, run_id: str) -> str:
    return join_uri(output_uri, STAGING_FOLDER, run_id, STATE_NAME)


def listing_uri(output_uri: str, run_id: str, attempt: int) -> str:
    return join_uri(output_uri, LISTING_FOLDER, attempt_name(run_id, attempt))


def listing_file_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def tallies_uri(output_uri: str, run_id: str) -> str:
    return join_uri(output_uri, STAGING_FOLDER, run_id, TALLIES_FOLDER)


def tally_file_name(attempt: int, index: int) -> str:
    """Fixed by the attempt and the listing file: a read task that Ray retries rewrites its tally."""
    return f"a{attempt:02d}-{index:05d}.parquet"


def stats_uri(output_uri: str, run_id: str, attempt: int) -> str:
    return join_uri(output_uri, LOGS_FOLDER, f"{attempt_name(run_id, attempt)}-stats.txt")


def log_uri(output_uri: str, run_id: str, attempt: int) -> str:
    return join_uri(output_uri, LOGS_FOLDER, f"{attempt_name(run_id, attempt)}-log.txt")


def runs_row_name(run_id: str, attempt: int) -> str:
    return f"{run_id}.parquet" if attempt == 1 else f"{attempt_name(run_id, attempt)}.parquet"


def staged_file_name(run_id: str, attempt: int, task_index: int) -> str:
    """Fixed by the run, the attempt and the write task: a retried task rewrites its file, never adds one."""
    return f"{attempt_name(run_id, attempt)}-{task_index:05d}.parquet"


def parquet_files(filesystem: pafs.FileSystem, folder: str, recursive: bool = True) -> list[str]:
    """The Parquet files under `folder` (none when it is absent), in path order, leaving out every hidden or
    underscore entry at any depth below it: temporary files, a staging or listing folder, Spark's `_SUCCESS`."""
    selector = pafs.FileSelector(folder, recursive=recursive, allow_not_found=True)
    return sorted(
        info.path
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not any(part.startswith(("_", ".")) for part in info.path[len(folder) :].split("/"))
    )


def table_files(output_uri: str, table: str, s3: S3Settings) -> tuple[pafs.FileSystem, list[str]]:
    """The files that make up `table`, and the filesystem that holds them: the one place where every reader (the
    skip-done join, resume, `camray query`, the tools) learns which files a table has."""
    fs, path = filesystem_for(table_uri(output_uri, table), s3)
    return fs, parquet_files(fs, path)


def table_dataset(output_uri: str, table: str, s3: S3Settings, current_columns_only: bool = False) -> pads.Dataset:
    """The whole table (`table_files`) as a pyarrow dataset (empty, with the current schema, when it has no file).

    `current_columns_only` reads with the current schema as it is, without inspecting any file: enough for a
    reader of columns every version has, and one request per file fewer on `runs/`."""
    fs, files = table_files(output_uri, table, s3)
    if not files:
        return pads.dataset(TABLES[table].empty_table())
    factory = pads.FileSystemDatasetFactory(fs, files, pads.ParquetFileFormat())
    if current_columns_only:
        return factory.finish(TABLES[table])
    inspected = factory.inspect(fragments=None if table == "runs" else 1, promote_options="permissive")
    schema = pa.unify_schemas([TABLES[table], inspected], promote_options="permissive")
    return factory.finish(schema)


def dataset_files(dataset: pads.Dataset) -> list[str]:
    """The files a `table_dataset` reads, in path order (none for the empty stand-in of a table without files)."""
    return sorted(dataset.files) if isinstance(dataset, pads.FileSystemDataset) else []


def stream_files(
    files: list[str],
    filesystem: pafs.FileSystem,
    schema: pa.Schema,
    columns: list[str],
    row_filter: pads.Expression | None = None,
) -> pa.RecordBatchReader:
    """`columns` of the rows of `files` (read with `schema`) that pass `row_filter`, as one Arrow stream in file
    order, each `FILES_PER_SCAN` files a dataset of their own, dropped once read: the memory a pass over a table
    takes does not grow with the number of its files."""
    wanted = pa.schema([schema.field(name) for name in columns])

    def scan() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(files), FILES_PER_SCAN):
            dataset = pads.dataset(files[start : start + FILES_PER_SCAN], schema=schema, filesystem=filesystem)
            yield from dataset.to_batches(
                columns=columns,
                filter=row_filter,
                batch_readahead=1,
                fragment_readahead=FILES_READ_AHEAD,
            )

    return pa.RecordBatchReader.from_batches(wanted, scan())


def stream_table(
    dataset: pads.Dataset, columns: list[str], row_filter: pads.Expression | None = None
) -> pa.RecordBatchReader:
    """`stream_files` over a `table_dataset`'s files, with its schema."""
    if not isinstance(dataset, pads.FileSystemDataset):
        return dataset.scanner(columns=columns, filter=row_filter).to_reader()
    return stream_files(dataset_files(dataset), dataset.filesystem, dataset.schema, columns, row_filter)


def has_runs(output_uri: str, s3: S3Settings) -> bool:
    fs, path = filesystem_for(table_uri(output_uri, "runs"), s3)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def succeeded_runs(output_uri: str, s3: S3Settings) -> pa.Table:
    """`run_id` and `started_at` of every succeeded run, newest first: the run order in which a later run's row of
    an image replaces an earlier one's. A run succeeds once, so each id appears once."""
    runs = table_dataset(output_uri, "runs", s3, current_columns_only=True).to_table(
        columns=["run_id", "started_at"], filter=pc.field("status") == SUCCEEDED
    )
    return runs.sort_by([("started_at", "descending"), ("run_id", "descending")])


def succeeded_run_ids(output_uri: str, s3: S3Settings) -> list[str]:
    return succeeded_runs(output_uri, s3).column("run_id").to_pylist()
