"""The output lease on a local folder and on a real S3 endpoint (moto): exclusive, renewed, released, taken over
only when stale."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import boto3
import pytest

from camray.io.lease import LEASE_NAME, LeaseHeld, LeaseRecord, OutputLease
from camray.io.sources import S3Settings


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3_server")
    bucket = f"lease-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/out"


def _read(output: str) -> LeaseRecord | None:
    if output.startswith("s3://"):
        bucket, _, prefix = output.removeprefix("s3://").partition("/")
        try:
            body = boto3.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/{LEASE_NAME}")["Body"].read()
        except boto3.client("s3").exceptions.NoSuchKey:
            return None
        return LeaseRecord.from_bytes(body)
    from pathlib import Path

    path = Path(output) / LEASE_NAME
    return LeaseRecord.from_bytes(path.read_bytes()) if path.exists() else None


def _plant(output: str, record: LeaseRecord) -> None:
    if output.startswith("s3://"):
        bucket, _, prefix = output.removeprefix("s3://").partition("/")
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{LEASE_NAME}", Body=record.to_bytes())
        return
    from pathlib import Path

    Path(output).mkdir(parents=True, exist_ok=True)
    (Path(output) / LEASE_NAME).write_bytes(record.to_bytes())


def test_a_second_run_is_refused_with_the_holder_and_expiry_named(output):
    first = OutputLease(output, "run-a", S3Settings(), seconds=60)
    first.acquire()
    try:
        held = _read(output)
        assert held is not None and held.run_id == "run-a" and held.host == socket.gethostname()
        second = OutputLease(output, "run-b", S3Settings(), seconds=60)
        with pytest.raises(LeaseHeld) as refused:
            second.acquire()
        message = str(refused.value)
        assert "run-a" in message and held.expires_at in message and "--wait-for-lease" in message
    finally:
        first.release()
    assert _read(output) is None
    third = OutputLease(output, "run-c", S3Settings(), seconds=60)
    third.acquire()
    third.release()


# How long a test waits for the lease's background thread to renew it (every second here) or to find it taken over:
# seconds on an idle machine, far longer on a loaded one; only a thread that never renews takes this long.
RENEWAL_DEADLINE_S = 60.0


def _wait_for(condition, what: str):
    """Polls `condition` until it returns something true, for up to `RENEWAL_DEADLINE_S`; fails naming `what`."""
    deadline = time.monotonic() + RENEWAL_DEADLINE_S
    while not (found := condition()):
        assert time.monotonic() < deadline, f"waited {RENEWAL_DEADLINE_S:.0f} s for {what}"
        time.sleep(0.1)
    return found


def test_the_lease_is_renewed_while_the_run_lasts(output):
    lease = OutputLease(output, "run-a", S3Settings(), seconds=3)
    lease.acquire()
    try:
        first = _read(output)
        first_expiry = datetime.fromisoformat(first.expires_at).replace(tzinfo=UTC)

        def outlived() -> LeaseRecord | None:
            """The lease as read once its first expiry is past, if a renewal has moved its expiry beyond that."""
            record = _read(output)
            past = datetime.now(UTC) > first_expiry
            return record if past and record is not None and record.expires_at > first.expires_at else None

        later = _wait_for(outlived, "the lease to outlive its first 3 s through renewals")
        assert (later.run_id, later.acquired_at) == (first.run_id, first.acquired_at)
        lease.check()
    finally:
        lease.release()


def test_an_expired_lease_is_taken_over_and_the_takeover_logged(output, caplog):
    _plant(
        output,
        LeaseRecord("crashed-run", "another-host", 4242, None, "2026-01-01T00:00:00", "2026-01-01T00:05:00"),
    )
    lease = OutputLease(output, "run-b", S3Settings(), seconds=60)
    with caplog.at_level(logging.WARNING, logger="camray.io.lease"):
        lease.acquire()
    try:
        assert _read(output).run_id == "run-b"
        assert lease.took_over is not None and lease.took_over.run_id == "crashed-run"
        assert any("took over the lease" in r.message and "crashed-run" in r.message for r in caplog.records)
    finally:
        lease.release()


def test_a_live_lease_of_another_host_is_respected_until_it_expires(output):
    _plant(output, LeaseRecord("remote-run", "another-host", 4242, None, "2026-01-01T00:00:00", "2999-01-01T00:00:00"))
    with pytest.raises(LeaseHeld, match="remote-run on another-host"):
        OutputLease(output, "run-b", S3Settings(), seconds=60).acquire(wait_seconds=1.0, poll_seconds=0.3)


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(output):
    """A driver killed with SIGKILL leaves its lease behind; a rerun on the same host need not wait for expiry."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from camray.io.lease import OutputLease; from camray.io.sources import S3Settings; "
            f"OutputLease({output!r}, 'killed-run', S3Settings(), seconds=600).acquire(); "
            "print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="killed-run"):
            OutputLease(output, "run-b", S3Settings(), seconds=60).acquire()
    finally:
        holder.kill()
        holder.wait()
    lease = OutputLease(output, "run-b", S3Settings(), seconds=60)
    lease.acquire()
    try:
        assert lease.took_over is not None and lease.took_over.run_id == "killed-run"
        assert json.loads(_read(output).to_bytes())["run_id"] == "run-b"
    finally:
        lease.release()


def test_a_run_whose_lease_was_taken_over_does_not_commit(output):
    lease = OutputLease(output, "slow-run", S3Settings(), seconds=3)
    lease.acquire()
    try:
        # Another run found the lease expired (as after a long pause) and took it.
        _plant(output, LeaseRecord("new-run", "another-host", 1, None, "2026-01-01T00:00:00", "2999-01-01T00:00:00"))
        _wait_for(lambda: lease.lost, "the renewal thread to find the lease taken over")
        with pytest.raises(RuntimeError, match="taken over"):
            lease.check()
    finally:
        lease.release()
    assert _read(output).run_id == "new-run"  # not ours to delete


def test_another_attempt_of_the_same_run_is_a_holder_like_any_other(output):
    """A resumed run leases under its original id: a live process holding that id makes it wait or refuse, and a
    dead one's lease is taken over; only this very process leasing twice is a mistake."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from camray.io.lease import OutputLease; from camray.io.sources import S3Settings; "
            f"OutputLease({output!r}, 'resumed-run', S3Settings(), seconds=600).acquire(); "
            "print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"resumed-run on {socket.gethostname()} \\(pid {holder.pid}\\)"):
            OutputLease(output, "resumed-run", S3Settings(), seconds=60).acquire(wait_seconds=0.5, poll_seconds=0.2)
    finally:
        holder.kill()
        holder.wait()
    lease = OutputLease(output, "resumed-run", S3Settings(), seconds=60)
    lease.acquire()
    try:
        assert lease.took_over is not None and lease.took_over.pid == holder.pid
        held = _read(output)
        assert held.run_id == "resumed-run" and held.pid != holder.pid
        with pytest.raises(RuntimeError, match="already leasing"):
            OutputLease(output, "resumed-run", S3Settings(), seconds=60).acquire()
    finally:
        lease.release()
    assert _read(output) is None
