"""The output's layout, in one place: what lives where under an output URI, and what its files are named.

```
<output>/
  results/  errors/  runs/            the tables (`TABLES`): Delta Lake tables, or plain Parquet (`FORMATS`)
  <table>/_delta_log/                 a Delta table's log: which files hold its current rows, version by version
  results/<run_id>-aNN-NNNNN.parquet  a write task's rows (attempt NN, task NNNNN): a Delta table's data file once
                                      a commit names it; in a Parquet output, moved here from `_staging/` at commit
  results/rewrite-<run_id>-aNN-NNNNN.parquet
                                      an older file rewritten by a run's commit without the rows it superseded
  results/migrated-NNNNN.parquet      an older Parquet output's rows that `camray migrate` kept from a file it
                                      could not keep whole; only the Delta log it writes names them
  runs/<run_id>.parquet               a run attempt's row (`<run_id>-aNN.parquet` after the first attempt)
  _lease.json                         the lease of the run writing here (`camray.io.lease`)
  _staging/<run_id>/                  a run's `run.json` until it commits (`io.resume`); in a Parquet output also
                                      its staged `results/` and `errors/` files
  _staging/<run_id>/tallies/          what each read task of shards or tables read (`io.container_staging`)
  _listing/<run_id>-aNN/              an attempt's inputs for its read tasks, removed when the attempt ends
  _logs/<run_id>-aNN-stats.txt        Ray Data's statistics of an attempt, linked from its runs row
  _logs/<run_id>-aNN-log.txt          the attempt's log: camray's lines and Ray's, kept off the terminal
```
A run has one id over all its attempts; `-aNN` names what belongs to attempt NN, so an attempt never overwrites
an earlier one's files, and a write task that Ray retries rewrites its own file rather than adding one. Readers of
a Parquet output's `*/**.parquet` skip the underscore entries, as Spark, Hive and Athena do; readers of a Delta
table read the files its log names, and nothing else.

Only names live here; `camray.io.store` turns them into paths, once per output.
"""

from __future__ import annotations

import re

import pyarrow as pa

from camray.io.schema import ERRORS, RESULTS, RUNS
from camray.io.sources import join_uri

TABLES: dict[str, pa.Schema] = {"results": RESULTS, "errors": ERRORS, "runs": RUNS}
# The tables the write tasks fill; `runs/` is written by the driver, one row per attempt.
ROW_TABLES = ("results", "errors")
DELTA, PARQUET = "delta", "parquet"
FORMATS = (DELTA, PARQUET)

DELTA_LOG = "_delta_log"
LEASE_NAME = "_lease.json"
STAGING_FOLDER = "_staging"
LISTING_FOLDER = "_listing"
LOGS_FOLDER = "_logs"
STATE_NAME = "run.json"
TALLIES_FOLDER = "tallies"
REWRITE_PREFIX = "rewrite-"
MIGRATED_PREFIX = "migrated-"

SUCCEEDED = "succeeded"

_ATTEMPT = re.compile(r"-a(\d+)-\d+\.parquet$")


def attempt_name(run_id: str, attempt: int) -> str:
    return f"{run_id}-a{attempt:02d}"


def check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"`table` must be one of {sorted(TABLES)}, not {table!r}")
    return table


def table_uri(output_uri: str, table: str) -> str:
    return join_uri(output_uri, check_table(table))


def lease_uri(output_uri: str) -> str:
    return join_uri(output_uri, LEASE_NAME)


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


def run_file_prefix(run_id: str) -> str:
    """What the names of a run's staged files start with, whatever the attempt."""
    return f"{run_id}-a"


def file_attempt(name: str) -> int | None:
    """The attempt a staged file's name (`staged_file_name`) or a rewritten file's names; None for other names."""
    match = _ATTEMPT.search(name)
    return int(match.group(1)) if match else None


def rewrite_file_name(run_id: str, attempt: int, index: int) -> str:
    """An older file, rewritten by this attempt's commit without the rows the run superseded."""
    return f"{REWRITE_PREFIX}{attempt_name(run_id, attempt)}-{index:05d}.parquet"


def migrated_file_name(index: int) -> str:
    return f"{MIGRATED_PREFIX}{index:05d}.parquet"
