"""One attempt of a run on its output, from the lease to the runs row: everything a run does to the output.

1. `OutputRun.begin` resolves the attempt (a new run, or the next attempt of an unfinished run with the same
   settings on the same input, which keeps that run's id) and takes the output's lease under its id;
2. `resume` puts the format's tables in place, reads back what earlier attempts of the run wrote, and writes this
   attempt's `run.json` before any work, so that a crash leaves a run the next one can resume;
3. `stage_listing` writes the inputs left to do under `_listing/` for the read tasks; `datasink` is where the
   write tasks put their rows;
4. `commit` makes the run's rows the tables' current ones, only while the run still holds the lease;
5. `write_runs_row`, `discard_listing` and `release`, however the attempt ended.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

from camray.io import layout
from camray.io.done import without_inputs
from camray.io.lease import OutputLease
from camray.io.output import Output
from camray.io.resume import PriorWork, RunIdentity, RunState, find_resumable, prior_work, write_state
from camray.io.sink import CamDatasink
from camray.io.sources import S3Settings, join_uri, store_errors

logger = logging.getLogger(__name__)

# Resolutions that another run's commit or crash may overturn before this run holds the lease; each takes that
# other run holding the output meanwhile, so a second one is already rare.
LEASE_RESOLUTIONS = 5
# Rows of the listing files after the first `FINE_LISTING_FILES`, each of one read batch.
LISTING_FILE_ROWS = 4096
FINE_LISTING_FILES = 64


@dataclass(frozen=True)
class Attempt:
    """Which run this invocation works on: a new run (attempt 1), or the next attempt of an unfinished run with
    the same settings on the same input, which keeps that run's id."""

    run_id: str
    number: int
    started: datetime  # this attempt's, for its runs row
    run_started_at: str  # the run's first attempt's, kept in its `run.json`

    @property
    def resumed(self) -> bool:
        return self.number > 1

    def agrees_with(self, other: Attempt) -> bool:
        """Both resolutions found no run to resume (a new run's id is each invocation's own), or the same attempt
        of the same run (a concurrent attempt of that run may have taken the number meanwhile)."""
        if not (self.resumed or other.resumed):
            return True
        return (self.run_id, self.number) == (other.run_id, other.number)


def new_attempt(started: datetime) -> Attempt:
    return Attempt(f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}", 1, started, started.isoformat())


def resolve_attempt(
    output: Output, identity: RunIdentity, resume: bool, started: datetime, quiet: bool = False
) -> Attempt:
    if resume:
        output.refresh()
        with store_errors("reading of the done work in", output.uri, output.s3):
            succeeded = set(output.succeeded_run_ids()) if output.format.has_tables() else set()
        unfinished = find_resumable(output, identity, succeeded, quiet=quiet)
        if unfinished is not None:
            return Attempt(unfinished.run_id, unfinished.attempt + 1, started, unfinished.started_at)
    return new_attempt(started)


def _listing_file_rows(index: int, read_batch: int) -> int:
    return read_batch if index < FINE_LISTING_FILES else max(read_batch, LISTING_FILE_ROWS)


@dataclass
class StagedListing:
    """The inputs to process, written as Parquet under `_listing/` for the read tasks; removed when the attempt
    ends (a crashed attempt's is debris that the next attempt, writing its own, does not read)."""

    uri: str
    files: int = 0
    rows: int = 0

    @property
    def images(self) -> int:
        return self.rows

    def expected_rows(self, s3: S3Settings) -> tuple[int | None, str]:
        """One row per listed input (`StagedContainers` counts by its read tasks' tallies, read through `s3`)."""
        return self.rows, ""


class OutputRun:
    """An attempt of a run holding its output's lease; `begin` makes one."""

    def __init__(self, output: Output, attempt: Attempt, lease: OutputLease) -> None:
        self.output = output
        self.attempt = attempt
        self.lease = lease
        self.prior: PriorWork | None = None

    @property
    def run_id(self) -> str:
        return self.attempt.run_id

    @property
    def number(self) -> int:
        return self.attempt.number

    @classmethod
    def begin(
        cls,
        output: Output,
        identity: RunIdentity,
        started: datetime,
        *,
        resume: bool = True,
        wait_for_lease: float = 0.0,
        lease_seconds: float = 300.0,
    ) -> OutputRun:
        """The attempt, and the output's lease taken under its run id.

        The attempt is resolved before the lease, so that the lease, the sink and every file carry the run's id
        from the start, and resolved again once the lease is held, when no other run can change the output: a run
        that held it meanwhile (this one waited for it, or raced it) may have committed the run this one meant to
        resume, or left one unfinished. Then the lease is given back and the attempt resolved anew.

        Only the answer under the lease counts. Where the output cannot be read, the look before the lease gives no
        answer (a new run), and the look under it fails: a new run then goes ahead, meets the same error in its
        first steps and fails with its runs row; a resumption is not trusted, and the lease is taken again as a
        new run."""
        deadline = time.monotonic() + wait_for_lease
        unreadable = False
        for _ in range(LEASE_RESOLUTIONS):
            try:
                expected = (
                    new_attempt(started)
                    if unreadable
                    else resolve_attempt(output, identity, resume, started, quiet=True)
                )
            except Exception as exc:  # answered under the lease, where a failure is the run's
                logger.debug("the attempt could not be resolved before the lease: %s", exc)
                expected = new_attempt(started)
            lease = output.lease(expected.run_id, lease_seconds)
            lease.acquire(wait_seconds=max(0.0, deadline - time.monotonic()))
            try:
                confirmed = resolve_attempt(output, identity, resume, started)
            except Exception:
                if not expected.resumed:
                    return cls(output, expected, lease)
                unreadable = True
            except BaseException:  # interrupted while looking: the lease is not left to expire
                lease.release()
                raise
            else:
                if confirmed.agrees_with(expected):
                    return cls(output, expected, lease)
                logger.info(
                    "run %s: the output changed while waiting for its lease (now %s); resolving the attempt again",
                    expected.run_id,
                    f"attempt {confirmed.number} of run {confirmed.run_id}" if confirmed.resumed else "a new run",
                )
            lease.release()
        raise RuntimeError(
            f"the runs on {output.uri} changed under this run {LEASE_RESOLUTIONS} times while it waited for the "
            "lease; run it again"
        )

    def resume(self, identity: RunIdentity) -> PriorWork | None:
        """Puts the tables in place (a new output's), reads what earlier attempts of a resumed run hold (under the
        lease, where no attempt is writing), and writes this attempt's `run.json`."""
        with store_errors("preparing of the tables in", self.output.uri, self.output.s3):
            self.output.format.prepare()
        self.prior = prior_work(self.output, self.run_id) if self.attempt.resumed else None
        if self.prior is not None:
            logger.warning(
                "resuming run %s (attempt %d): %d inputs already done by earlier attempts",
                self.run_id,
                self.number,
                len(self.prior.inputs),
            )
        state = RunState(
            self.run_id,
            self.number,
            identity.fingerprint,
            identity.model,
            identity.input_uri,
            self.attempt.run_started_at,
        )
        write_state(self.output, state)
        return self.prior

    # ---------------------------------------------------------------------------------------------- the work

    @property
    def listing_uri(self) -> str:
        return layout.listing_uri(self.output.uri, self.run_id, self.number)

    @property
    def tallies_uri(self) -> str:
        return layout.tallies_uri(self.output.uri, self.run_id)

    def stage_listing(self, chunks: Iterable[pa.Table], read_batch: int) -> StagedListing:
        """Streams the inputs left to do into Parquet files, holding one chunk at a time, without those earlier
        attempts of the run hold (whatever their version).

        File sizes grow: the first files hold one read batch each, so that a small run still spreads over the
        cluster; later ones up to `LISTING_FILE_ROWS`, so that millions of inputs make hundreds of files, not
        tens of thousands. Each file becomes one read+decode task."""
        store = self.output.store
        staged = StagedListing(self.listing_uri)
        folder = store.path(layout.LISTING_FOLDER, layout.attempt_name(self.run_id, self.number))
        store.fs.create_dir(folder, recursive=True)
        pending: list[pa.Table] = []
        pending_rows = 0

        def flush(final: bool) -> None:
            nonlocal pending, pending_rows
            while pending_rows and (final or pending_rows >= _listing_file_rows(staged.files, read_batch)):
                table = pa.concat_tables(pending)
                size = _listing_file_rows(staged.files, read_batch)
                path = f"{folder}/{layout.listing_file_name(staged.files)}"
                pq.write_table(table.slice(0, size), path, filesystem=store.fs)
                staged.files += 1
                staged.rows += min(size, table.num_rows)
                rest = table.slice(size)
                pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

        for chunk in chunks:
            if self.prior is not None:
                chunk = without_inputs(chunk, self.prior.inputs)
            if chunk.num_rows:
                pending.append(chunk)
                pending_rows += chunk.num_rows
                flush(final=False)
        flush(final=True)
        return staged

    def listing_file_uris(self, staged: StagedListing) -> list[str]:
        return [join_uri(staged.uri, layout.listing_file_name(index)) for index in range(staged.files)]

    def datasink(self, rows_per_file: int | None) -> CamDatasink:
        folders = {table: self.output.format.staging_uri(table, self.run_id) for table in layout.ROW_TABLES}
        return CamDatasink(folders, self.run_id, self.output.s3, rows_per_file, self.number)

    def write_stats(self, text: str) -> str:
        """Ray Data's statistics of the attempt, beside the output; returns their URI for the runs row."""
        uri = layout.stats_uri(self.output.uri, self.run_id, self.number)
        self.output.store.write_text(text, layout.LOGS_FOLDER, uri.rsplit("/", 1)[-1])
        return uri

    @property
    def log_uri(self) -> str:
        return layout.log_uri(self.output.uri, self.run_id, self.number)

    def save_log(self, data: bytes) -> None:
        self.output.store.write_bytes(data, layout.LOGS_FOLDER, self.log_uri.rsplit("/", 1)[-1])

    def commit(self) -> tuple[str, ...]:
        """Makes the run's rows current, once: only while this run still holds the lease, and only if no input
        appears twice among them."""
        self.lease.check()
        with store_errors("commit to", self.output.uri, self.output.s3):
            return tuple(self.output.format.commit(self.run_id, self.number))

    # ------------------------------------------------------------------------------------------------ the end

    def discard_listing(self) -> None:
        try:
            self.output.store.delete_folder(layout.LISTING_FOLDER, layout.attempt_name(self.run_id, self.number))
        except OSError as exc:  # the store may be what failed the run; a leftover listing harms no reader
            logger.warning("run %s: could not remove its listing %s: %s", self.run_id, self.listing_uri, exc)

    def write_runs_row(self, row: dict) -> None:
        """The attempt's row, last. A succeeded run without its row is not complete to readers, so that failure
        is raised; for any other status the run's own error, raised after this, is the one to report."""
        try:
            with store_errors("write of the runs row to", self.output.uri, self.output.s3):
                self.output.format.append_runs_row(row)
        except OSError:
            if row["status"] == layout.SUCCEEDED:
                raise
            logger.exception("run %s: could not record its %s status in runs/", row["run_id"], row["status"])
        if row["status"] == layout.SUCCEEDED:
            self.output.format.discard_staging(self.run_id)

    def release(self) -> None:
        self.lease.release()
