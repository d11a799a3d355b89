"""Resuming a run that did not finish: its staged files are kept, and the next run with the same settings
continues it instead of starting over.

Each run writes `_staging/<run_id>/run.json` (settings fingerprint, model, input, attempt) before any work.
A run that crashes, is killed, is interrupted or ends incomplete leaves that folder behind; the next run on the
output looks for such a folder with the same fingerprint, model and input and takes over its run id as attempt
n + 1: it looks before taking the lease, so as to take it under that id, and again once it holds the lease, when
nothing else can change the answer. It then processes only the inputs that the folder's files (and any of the
run's files a half-done commit already moved) do not hold, read under the lease. The run commits once,
at the end, with every attempt's files: readers never see a partial run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from camray.io.layout import STATE_NAME, staging_root, state_uri
from camray.io.sink import discard_staging, run_files
from camray.io.sources import S3Settings, filesystem_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunState:
    run_id: str
    attempt: int
    fingerprint: str
    model: str
    input_uri: str
    started_at: str


@dataclass(frozen=True)
class PriorWork:
    """What earlier attempts of a run left: the inputs they hold, and how many results and errors."""

    inputs: pa.Array
    results: int
    errors: int
    errors_by_stage: Counter[str]


def write_state(output_uri: str, state: RunState, s3: S3Settings) -> None:
    fs, path = filesystem_for(state_uri(output_uri, state.run_id), s3)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(asdict(state), sort_keys=True).encode())


def _states(output_uri: str, s3: S3Settings) -> list[RunState]:
    fs, root = filesystem_for(staging_root(output_uri), s3)
    states = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{STATE_NAME}") as stream:
                states.append(RunState(**json.loads(stream.read())))
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("staging folder %s has no readable %s (%s); left alone", info.path, STATE_NAME, exc)
    return states


def find_resumable(
    output_uri: str,
    fingerprint: str,
    model: str,
    input_uri: str,
    succeeded: set[str],
    s3: S3Settings,
    quiet: bool = False,
) -> RunState | None:
    """The latest unfinished run with these settings on this input, or None; `quiet` leaves out the warnings
    about other settings' runs (for a look that is repeated under the lease).

    Staging left by a run that did succeed (a crash after its runs row, before the folder was removed) is
    debris and is removed: safe without the lease too, as a run is `succeeded` only after its commit has emptied
    that folder. Staging of runs with other settings is left for a rerun of those settings."""
    candidates = []
    for state in _states(output_uri, s3):
        if state.run_id in succeeded:
            discard_staging(output_uri, state.run_id, s3)
        elif (state.fingerprint, state.model, state.input_uri) == (fingerprint, model, input_uri):
            candidates.append(state)
        elif not quiet:
            logger.warning(
                "run %s (model %s, settings %s, input %s) did not finish; its staged files stay in place for a rerun "
                "with those settings",
                state.run_id,
                state.model,
                state.fingerprint,
                state.input_uri,
            )
    return max(candidates, key=lambda state: (state.started_at, state.attempt), default=None)


def prior_work(output_uri: str, run_id: str, s3: S3Settings) -> PriorWork:
    fs, _ = filesystem_for(output_uri, s3)
    paths = run_files(output_uri, run_id, s3)
    uris, counts, stages = [], {"results": 0, "errors": 0}, Counter()
    for path in paths:
        is_errors = "/errors/" in path
        try:
            table = pq.read_table(path, filesystem=fs, columns=["image_uri", "stage"] if is_errors else ["image_uri"])
        except (OSError, pa.ArrowInvalid) as exc:  # files are written whole; should one not be, redo its inputs
            logger.warning("staged file %s is unreadable (%s); its inputs are processed again", path, exc)
            fs.delete_file(path)
            continue
        uris.append(table.column("image_uri"))
        counts["errors" if is_errors else "results"] += table.num_rows
        if is_errors:
            stages.update(table.column("stage").to_pylist())
    inputs = pc.unique(pa.chunked_array(uris, type=pa.string())) if uris else pa.array([], pa.string())
    return PriorWork(inputs, errors_by_stage=stages, **counts)
