"""Resuming a run that did not finish: its files are kept, and the next run with the same settings continues it
instead of starting over.

Each run writes `_staging/<run_id>/run.json` (settings fingerprint, model, input, attempt) before any work.
A run that crashes, is killed, is interrupted or ends incomplete leaves that folder behind; the next run on the
output looks for such a folder with the same fingerprint, model and input and takes over its run id as attempt
n + 1: it looks before taking the lease, so as to take it under that id, and again once it holds the lease, when
nothing else can change the answer. It then processes only the inputs that the run's files hold not already
(`TableFormat.run_rows`: staged files of every attempt, and the rows a commit that did not finish made current),
read under the lease. The run commits once, at the end, with every attempt's files: readers never see a partial
run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from camray.io.layout import ROW_TABLES, STAGING_FOLDER, STATE_NAME

if TYPE_CHECKING:
    from camray.io.output import Output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunIdentity:
    """What makes an unfinished run this one's to resume: the same settings, model and input."""

    fingerprint: str
    model: str
    input_uri: str


@dataclass(frozen=True)
class RunState:
    run_id: str
    attempt: int
    fingerprint: str
    model: str
    input_uri: str
    started_at: str

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.fingerprint, self.model, self.input_uri)


@dataclass(frozen=True)
class PriorWork:
    """What earlier attempts of a run left: the inputs they hold, and how many results and errors."""

    inputs: pa.Array
    results: int
    errors: int
    errors_by_stage: Counter[str]


def write_state(output: Output, state: RunState) -> None:
    output.store.write_text(json.dumps(asdict(state), sort_keys=True), STAGING_FOLDER, state.run_id, STATE_NAME)


def _states(output: Output) -> list[RunState]:
    fs = output.store.fs
    states = []
    selector = pafs.FileSelector(output.store.path(STAGING_FOLDER), allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{STATE_NAME}") as stream:
                states.append(RunState(**json.loads(stream.read())))
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("staging folder %s has no readable %s (%s); left alone", info.path, STATE_NAME, exc)
    return states


def find_resumable(output: Output, identity: RunIdentity, succeeded: set[str], quiet: bool = False) -> RunState | None:
    """The latest unfinished run with these settings on this input, or None; `quiet` leaves out the warnings
    about other settings' runs (for a look that is repeated under the lease).

    Staging left by a run that did succeed (a crash after its runs row, before the folder was removed) is
    debris and is removed: safe without the lease too, as a run is `succeeded` only after its commit. Staging of
    runs with other settings is left for a rerun of those settings."""
    candidates = []
    for state in _states(output):
        if state.run_id in succeeded:
            output.format.discard_staging(state.run_id)
        elif state.identity == identity:
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


def prior_work(output: Output, run_id: str) -> PriorWork:
    columns = {"results": ["image_uri"], "errors": ["image_uri", "stage"]}
    uris, counts, stages = [], dict.fromkeys(ROW_TABLES, 0), Counter()
    for part in output.format.run_rows(run_id, columns):
        uris.append(part.rows.column("image_uri"))
        counts[part.table] += part.rows.num_rows
        if part.table == "errors":
            stages.update(part.rows.column("stage").to_pylist())
    inputs = pc.unique(pa.chunked_array(uris, type=pa.string())) if uris else pa.array([], pa.string())
    return PriorWork(inputs, errors_by_stage=stages, **counts)
