"""The benchmarks' memory sampler counts this process and the Ray workers it started, and no other process,
with real processes named as Ray names its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.bench.memory import MemorySampler

MIB = 2**20
# A process holding `size` MiB of touched memory until its stdin closes.
HOLD = (
    "import sys; block = bytearray({size} * 2**20); block[::4096] = b'x' * len(block[::4096]); "
    "print('ready', flush=True); sys.stdin.read()"
)


def _fake_worker(size_mib: int) -> subprocess.Popen:
    """A process whose command line starts `ray::`, as a Ray worker's does once it has named itself."""
    return subprocess.Popen(
        ["ray::FakeWorker", "-c", HOLD.format(size=size_mib)],
        executable=sys.executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _sample(seconds: float) -> MemorySampler:
    with MemorySampler(interval=0.05) as sampler:
        time.sleep(seconds)
    return sampler


@pytest.fixture
def worker():
    process = _fake_worker(200)
    assert process.stdout.readline() == "ready\n"  # its memory is touched before sampling starts
    yield process
    process.stdin.close()
    process.wait(10)


def test_counts_the_driver_and_its_workers(worker):
    sampler = _sample(1.5)
    assert sampler.peak_workers >= 200 * MIB
    assert sampler.peak_driver > 20 * MIB
    assert sampler.peak >= sampler.peak_driver + 200 * MIB
    assert sampler.peak_object_store == -1  # not asked for
    rows = sampler.timeline(buckets=3)
    assert len(rows) == 3 and all(row["workers_mib"] >= 200 for row in rows)
    assert all(row["object_store_mib"] is None for row in rows)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def test_ignores_workers_of_other_clusters():
    """A `ray::` process this one did not start (here: orphaned by a parent that exits at once) is someone
    else's cluster on a shared machine."""
    launcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; "
            "p = subprocess.Popen(['ray::OtherCluster', '-c', 'import time; block = bytearray(2**28); "
            "block[::4096] = bytes(len(block[::4096])); time.sleep(120)'], executable=sys.executable, "
            "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = int(launcher.stdout)
    try:
        deadline = time.monotonic() + 30
        while _rss_mib(orphan) < 256 and time.monotonic() < deadline:
            time.sleep(0.1)
        sampler = _sample(1.0)
        assert _rss_mib(orphan) >= 256  # it was there, holding its memory, all along
        assert str(orphan) not in sampler._workers
        assert sampler.peak_workers < 256 * MIB
    finally:
        os.kill(orphan, signal.SIGTERM)
