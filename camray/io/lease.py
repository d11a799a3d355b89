"""One run per output at a time: a lease object under the output URI, created only if absent.

`<output>/_lease.json` holds the holder's run id, host, process id and expiry. It is created with an S3
conditional put (`PutObject` with `If-None-Match: *`, which a store answers with 412 when the key exists) or an
exclusive create on a local path, and renewed by a background thread while the run lasts. A second run on the
same output finds it and refuses (or waits). A lease whose expiry has passed, or whose holder is a process on
this host that no longer exists, is taken over, and the takeover is logged: a crashed run never blocks the
output for longer than its lease. Readers of `*/**.parquet` never see the lease (not Parquet, leading
underscore).

A takeover or renewal replaces the object only if it is still the one that was read (`If-Match` on its ETag; on
a local path a compare-and-replace under `flock`), so two runs racing for an expired lease cannot both win.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from camray.errors import LeaseHeld
from camray.io.layout import LEASE_NAME, lease_uri
from camray.io.s3 import StoreUnavailableError
from camray.io.sources import S3Settings, endpoint_of, is_s3, s3_client

logger = logging.getLogger(__name__)

__all__ = ["LEASE_NAME", "LeaseHeld", "LeaseLost", "LeaseRecord", "OutputLease"]


class LeaseLost(RuntimeError):
    """Another run took the lease over while this one held it (it expired unrenewed): do not commit."""


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    host: str
    pid: int
    pid_started: float | None
    acquired_at: str
    expires_at: str

    def expired(self, now: datetime | None = None) -> bool:
        return datetime.fromisoformat(self.expires_at).replace(tzinfo=UTC) <= (now or datetime.now(UTC))

    def holder_is_gone(self) -> bool:
        """The holder is a process of this host that no longer exists (or a new process reusing its pid)."""
        if self.host != socket.gethostname():
            return False
        started = _process_started(self.pid)
        return started is None or (self.pid_started is not None and abs(started - self.pid_started) > 1.0)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        return cls(**json.loads(data))


def _process_started(pid: int) -> float | None:
    """Start time of a process of this host in clock ticks since boot, None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0
    # The command name may hold spaces and parentheses: fields resume after its last ")".
    return float(stat.rsplit(")", 1)[1].split()[19])


def _now_text(offset_seconds: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_seconds)).replace(tzinfo=None).isoformat(timespec="seconds")


class _LocalStore:
    """The lease as a local file. Every change happens under an exclusive `flock` of a sidecar file, so a
    renewal, a takeover and a release on this host never interleave; the file itself is replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(f".{path.name}.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data: bytes) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        temporary.write_bytes(data)
        os.replace(temporary, self.path)

    def create(self, data: bytes) -> bool:
        with self._locked():
            if self.path.exists():
                return False
            self._write(data)
            return True

    def read(self) -> tuple[bytes, str] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, data.decode()

    def replace(self, data: bytes, expected_tag: str) -> bool:
        """Replaces the lease only if it still holds `expected_tag` (its content)."""
        with self._locked():
            current = self.read()
            if current is None or current[1] != expected_tag:
                return False
            self._write(data)
            return True

    def delete(self, expected_tag: str) -> bool:
        with self._locked():
            current = self.read()
            if current is None or current[1] != expected_tag:
                return False
            self.path.unlink()
            return True


class _S3Store:
    """The lease as an S3 object; a store that fails every attempt raises `StoreUnavailableError` naming the
    operation and the endpoint, as the job's other S3 calls do."""

    def __init__(self, uri: str, s3: S3Settings) -> None:
        self.uri = uri
        self.s3 = s3
        self.bucket, _, self.key = uri.removeprefix("s3://").partition("/")
        self.client = s3_client(s3)

    @contextlib.contextmanager
    def _named(self, operation: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError

        try:
            yield
        except BotoCoreError as exc:
            raise StoreUnavailableError(
                f"S3 {operation} {self.uri} on {endpoint_of(self.s3)} failed after {self.s3.max_attempts} attempts: "
                f"{exc}"
            ) from exc

    def _precondition_failed(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or status in (409, 412)

    def create(self, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._named("PutObject"):
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if self._precondition_failed(exc):
                return False
            raise
        return True

    def read(self) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            with self._named("GetObject"):
                response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def replace(self, data: bytes, expected_tag: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._named("PutObject"):
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfMatch=expected_tag)
        except ClientError as exc:
            if self._precondition_failed(exc):
                return False
            raise
        return True

    def delete(self, expected_tag: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._named("DeleteObject"):
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=expected_tag)
        except ClientError as exc:
            if self._precondition_failed(exc):
                return False
            raise
        return True


class OutputLease:
    """The lease of one output for one run: `acquire()`, then renewed in the background until `release()`."""

    def __init__(self, output_uri: str, run_id: str, s3: S3Settings, seconds: float = 300.0) -> None:
        if seconds < 3:
            raise ValueError("`sink.lease_seconds` must be at least 3")
        self.output_uri = output_uri
        self.uri = lease_uri(output_uri)
        self.run_id = run_id
        self.seconds = seconds
        if is_s3(output_uri):
            self._store: _LocalStore | _S3Store = _S3Store(self.uri, s3)
        else:
            self._store = _LocalStore(Path(self.uri.removeprefix("file://")).expanduser().resolve())
        self._tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None
        self.took_over: LeaseRecord | None = None
        self._acquired_at = _now_text()

    def _record(self) -> LeaseRecord:
        return LeaseRecord(
            run_id=self.run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_started=_process_started(os.getpid()),
            acquired_at=self._acquired_at,
            expires_at=_now_text(self.seconds),
        )

    def _try_once(self) -> LeaseRecord | None:
        """Takes the lease if free or stale; returns the live holder otherwise."""
        record = self._record()
        if self._store.create(record.to_bytes()):
            self._tag = self._current_tag()
            return None
        current = self._store.read()
        if current is None:  # released between our create and read: try again at once
            return self._try_once()
        holder = LeaseRecord.from_bytes(current[0])
        # The same run id in another process is another attempt of this run (a resumed run keeps its id): a holder
        # like any other. Only this process holding it already is a mistake.
        if holder.run_id == self.run_id and (holder.host, holder.pid) == (socket.gethostname(), os.getpid()):
            raise RuntimeError(f"run id {self.run_id} is already leasing {self.output_uri}")
        if holder.expired() or holder.holder_is_gone():
            if self._store.replace(record.to_bytes(), current[1]):
                self._tag = self._current_tag()
                self.took_over = holder
                logger.warning(
                    "took over the lease of %s from run %s on %s (pid %s), %s",
                    self.output_uri,
                    holder.run_id,
                    holder.host,
                    holder.pid,
                    f"expired at {holder.expires_at} UTC" if holder.expired() else "whose process is gone",
                )
                return None
            return self._try_once()
        return holder

    def _is_ours(self, record: LeaseRecord) -> bool:
        return (record.run_id, record.host, record.pid, record.acquired_at) == (
            self.run_id,
            socket.gethostname(),
            os.getpid(),
            self._acquired_at,
        )

    def _current_tag(self) -> str:
        current = self._store.read()
        if current is None or not self._is_ours(LeaseRecord.from_bytes(current[0])):
            raise RuntimeError(f"the lease of {self.output_uri} vanished right after it was created")
        return current[1]

    def acquire(self, wait_seconds: float = 0.0, poll_seconds: float = 5.0) -> None:
        """Takes the lease, waiting up to `wait_seconds` for a live holder; raises `LeaseHeld` otherwise."""
        deadline = time.monotonic() + wait_seconds
        while True:
            holder = self._try_once()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LeaseHeld(self.output_uri, holder)
            logger.info(
                "waiting for the lease of %s, held by run %s until %s UTC", self.uri, holder.run_id, holder.expires_at
            )
            time.sleep(min(poll_seconds, max(0.1, deadline - time.monotonic())))
        logger.info("run %s leased %s until %s UTC", self.run_id, self.output_uri, _now_text(self.seconds))
        self._thread = threading.Thread(target=self._renew_until_released, name="camray-lease", daemon=True)
        self._thread.start()

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self._store.replace(self._record().to_bytes(), self._tag or ""):
                    self.lost = f"the lease of {self.output_uri} was taken over by another run"
                    logger.error("%s; run %s will not commit", self.lost, self.run_id)
                    return
                self._tag = self._current_tag()
            except Exception as exc:  # a store hiccup: the next renewal may succeed before expiry
                logger.warning("renewing the lease of %s failed: %s", self.output_uri, exc)

    def check(self) -> None:
        """Raises `LeaseLost` if another run took the lease over: committing now could duplicate its work."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._tag is not None and not self.lost:
            if not self._store.delete(self._tag):
                logger.warning("the lease of %s was no longer ours to release", self.output_uri)
            self._tag = None
