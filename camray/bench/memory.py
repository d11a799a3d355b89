"""Resident memory of a Ray job, sampled over time: this process (the driver), the Ray worker processes of the
local cluster it started, and optionally the object store. Shared by `make bench` and `make bench-scale`."""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MemorySample:
    """One sweep, in bytes: seconds since the sampler started; the driver's RSS; the workers' summed RSS, their
    summed anonymous RSS (resident pages no file or shared memory backs: their heaps); their summed PSS and the
    object store's bytes in use, each -1 where this sweep did not read it.

    Summed RSS counts a page that several workers map once per worker (the ~500 MB of libtorch's code that
    each predictor actor maps, for one), so it overstates what the workers take together; summed PSS splits
    each shared page among the processes mapping it, so it adds up to the physical memory they hold."""

    seconds: float
    driver: int
    workers: int
    object_store: int
    workers_anon: int = -1
    workers_pss: int = -1


class MemorySampler:
    """Samples the driver's RSS and the summed RSS of the Ray workers of the cluster this process started
    (`ray.init()` with no address), from /proc, every `interval` seconds.

    It runs beside the job it measures, on the same cores, so a sweep reads one short file per known worker
    (`statm`), and a command line only when a process is new or, if it was not a worker, once a second (a
    process caught between the raylet's fork and its exec still shows the raylet's command line). With
    `object_store_every` set, the object store's bytes in use are read from the raylet every that many
    seconds (a gRPC call, too costly for every sweep); with `pss_every` set, the workers' PSS every that many
    seconds (the kernel walks each process's page tables for it)."""

    def __init__(
        self, interval: float = 0.1, object_store_every: float | None = None, pss_every: float | None = None
    ) -> None:
        self.interval = interval
        self.samples: list[MemorySample] = []
        self._object_store_every = object_store_every
        self._pss_every = pss_every
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._driver = str(os.getpid())
        self._workers: set[str] = set()
        self._others_checked_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._store_state: object | None = None
        self._error: Exception | None = None

    @property
    def peak(self) -> int:
        """Peak of driver + workers, summed within each sweep."""
        return max((s.driver + s.workers for s in self.samples), default=0)

    @property
    def peak_driver(self) -> int:
        return max((s.driver for s in self.samples), default=0)

    @property
    def peak_workers(self) -> int:
        return max((s.workers for s in self.samples), default=0)

    @property
    def peak_workers_anon(self) -> int:
        return max((s.workers_anon for s in self.samples), default=0)

    @property
    def peak_workers_pss(self) -> int:
        return max((s.workers_pss for s in self.samples), default=-1)

    @property
    def peak_object_store(self) -> int:
        return max((s.object_store for s in self.samples), default=-1)

    def _worker(self, pid: str) -> bool:
        if pid in self._workers:
            return True
        now = time.monotonic()
        if now - self._others_checked_at.get(pid, -math.inf) < 1.0:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # A new Ray worker runs `default_worker.py` until it renames itself `ray::...`. Other Ray clusters on a
        # shared machine have workers too: only those the raylet this process started forked count.
        ray_worker = cmdline.startswith(b"ray::") or b"ray/_private/workers/default_worker.py" in cmdline
        if ray_worker and self._descends_from_driver(pid):
            self._workers.add(pid)
            return True
        self._others_checked_at[pid] = now
        return False

    def _descends_from_driver(self, pid: str) -> bool:
        """Whether the driver is among the first few ancestors of `pid` (worker -> raylet -> driver)."""
        for _ in range(4):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = stat.rsplit(")", 1)[1].split()[1]  # the command name, in parentheses, may hold spaces
            if pid == self._driver:
                return True
            if pid in ("0", "1"):
                return False
        return False

    def _rss(self, pid: str) -> tuple[int, int]:
        """(resident, anonymous resident) bytes: statm's resident pages, and those less its file-backed and
        shared-memory ones."""
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
            return int(fields[1]) * self._page_size, (int(fields[1]) - int(fields[2])) * self._page_size
        except (OSError, ValueError, IndexError):
            return 0, 0  # the process exited between the listing and the read

    @staticmethod
    def _pss(pid: str) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass  # exited, or a kernel without smaps_rollup (before 4.14): counted as nothing
        return 0

    def _object_store_bytes(self) -> int:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        if self._store_state is None:  # this process's cluster: others may run on a shared machine
            import ray

            self._store_state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return int(get_memory_info_reply(self._store_state).store_stats.object_store_bytes_used)

    def _sweep(self, started: float, store_due: bool, pss_due: bool) -> MemorySample:
        pids = [pid for pid in filter(str.isdigit, os.listdir("/proc")) if pid != self._driver and self._worker(pid)]
        resident = [self._rss(pid) for pid in pids]
        return MemorySample(
            seconds=time.monotonic() - started,
            driver=self._rss(self._driver)[0],
            workers=sum(total for total, _ in resident),
            object_store=self._object_store_bytes() if store_due else -1,
            workers_anon=sum(anon for _, anon in resident),
            workers_pss=sum(self._pss(pid) for pid in pids) if pss_due else -1,
        )

    def _run(self) -> None:
        started = time.monotonic()
        read_at = {"store": -math.inf, "pss": -math.inf}

        def due(name: str, every: float | None, now: float) -> bool:
            if every is None or now - read_at[name] < every:
                return False
            read_at[name] = now
            return True

        try:
            while not self._stop.is_set():
                now = time.monotonic()
                store_due = due("store", self._object_store_every, now)
                pss_due = due("pss", self._pss_every, now)
                self.samples.append(self._sweep(started, store_due, pss_due))
                time.sleep(self.interval)
        except Exception as exc:  # raised again on exit: a sampler that died must not report zeros
            self._error = exc

    def timeline(self, buckets: int = 10) -> list[dict[str, float | None]]:
        """Peaks (MiB) within each of `buckets` equal spans of the run: flat memory shows as a flat row."""
        if not self.samples:
            return []
        end = self.samples[-1].seconds or 1.0
        rows = []
        for i in range(buckets):
            span = [s for s in self.samples if i * end / buckets <= s.seconds <= (i + 1) * end / buckets]
            if not span:
                continue
            store = max(s.object_store for s in span)
            pss = max(s.workers_pss for s in span)
            rows.append(
                {
                    "until_seconds": round((i + 1) * end / buckets, 1),
                    "driver_mib": max(s.driver for s in span) / 2**20,
                    "workers_mib": max(s.workers for s in span) / 2**20,
                    "workers_anon_mib": max(s.workers_anon for s in span) / 2**20,
                    "workers_pss_mib": pss / 2**20 if pss >= 0 else None,
                    "object_store_mib": store / 2**20 if store >= 0 else None,
                }
            )
        return rows

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError("the memory sampler failed") from self._error
