"""An attempt of a run on its output: the attempt resolved before the lease and confirmed under it, and the listing
staged in files that start fine then grow."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
from outputs_made import runs_row

from camray.io.lease import LeaseRecord
from camray.io.output import Output
from camray.io.output_run import FINE_LISTING_FILES, LISTING_FILE_ROWS, OutputRun, _listing_file_rows
from camray.io.resume import RunIdentity, RunState, write_state


def test_listing_files_start_fine_then_grow():
    assert [_listing_file_rows(i, 32) for i in (0, FINE_LISTING_FILES - 1)] == [32, 32]
    assert _listing_file_rows(FINE_LISTING_FILES, 32) == LISTING_FILE_ROWS
    # A million inputs in batches of 32: some hundreds of read tasks, not tens of thousands.
    assert FINE_LISTING_FILES + (1_000_000 - 32 * FINE_LISTING_FILES) / LISTING_FILE_ROWS < 400


def _hold_lease(output: str, run_id: str) -> subprocess.Popen:
    """A live process of this host holding the output's lease as `run_id` (another run's driver)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from camray.io.lease import OutputLease; from camray.io.sources import S3Settings; "
            f"OutputLease({output!r}, {run_id!r}, S3Settings(), seconds=600).acquire(); "
            "print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("meanwhile", ["committed", "left unfinished", "made unreadable"])
def test_the_attempt_is_resolved_before_the_lease_and_confirmed_under_it(meanwhile, tmp_path, caplog):
    """A run waiting for the lease resolved its attempt from what it saw then; the holder's run may commit (the run
    to resume is done) or crash (a run to resume appears) before the lease is free, or the output becomes
    unreadable (then no resumption is trusted). The attempt it works on is the one true under the lease, and the
    lease names it."""
    out = str(tmp_path / "out")
    identity = RunIdentity("f00d", "efficientnet_lite0", str(tmp_path / "in"))
    holder_output = Output(out)

    def leave_unfinished(run_id: str) -> None:
        state = RunState(run_id, 1, identity.fingerprint, identity.model, identity.input_uri, "2026-11-25T01:00:00")
        write_state(holder_output, state)

    holder_id = "holder-run"
    if meanwhile == "committed":
        leave_unfinished(holder_id)  # the holder is itself attempt 2 of an unfinished run, about to commit
    elif meanwhile == "made unreadable":
        leave_unfinished("crashed-run")
    holder = _hold_lease(out, holder_id)
    got: dict = {}
    waiting = Output(out)  # built before the holder's run changes the output, as a waiting run's is

    def begin() -> None:
        got["result"] = OutputRun.begin(waiting, identity, datetime.now(UTC), wait_for_lease=120)

    waiter = threading.Thread(target=begin)
    try:
        with caplog.at_level(logging.INFO, logger="camray"):
            waiter.start()
            deadline = time.monotonic() + 60
            while not any("waiting for the lease" in record.message for record in caplog.records):
                assert time.monotonic() < deadline, "the second run never waited for the lease"
                time.sleep(0.1)
            if meanwhile == "committed":
                holder_output.format.prepare()
                holder_output.format.append_runs_row(runs_row(holder_id, attempt=2))
                holder_output.format.discard_staging(holder_id)
            elif meanwhile == "left unfinished":
                leave_unfinished(holder_id)
            else:
                log = tmp_path / "out" / "runs" / "_delta_log"
                log.mkdir(parents=True)
                (log / "00000000000000000000.json").write_bytes(b"not a Delta log" * 8)
            holder.kill()
            holder.wait()
            waiter.join(timeout=60)
        assert not waiter.is_alive()
        run = got["result"]
        attempt = run.attempt
        try:
            if meanwhile == "committed":
                assert attempt.number == 1 and attempt.run_id != holder_id
            elif meanwhile == "left unfinished":
                assert (attempt.run_id, attempt.number) == (holder_id, 2)
            else:
                assert attempt.number == 1 and attempt.run_id not in (holder_id, "crashed-run")
            if meanwhile != "made unreadable":
                assert any("resolving the attempt again" in record.message for record in caplog.records)
            held = LeaseRecord.from_bytes((tmp_path / "out" / "_lease.json").read_bytes())
            assert held.run_id == attempt.run_id
        finally:
            run.release()
    finally:
        holder.kill()
        holder.wait()
