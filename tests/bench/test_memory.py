"""The benchmarks' memory sampler counts this process and the Ray workers it started, and no other process,
with real processes named as Ray names its workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from camray.bench.memory import MemorySampler

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
    assert sampler.peak_object_store == -1 and sampler.peak_workers_pss == -1  # not asked for
    assert sampler.peak_workers_anon >= 200 * MIB  # a heap: no file backs it
    rows = sampler.timeline(buckets=3)
    assert len(rows) == 3 and all(row["workers_mib"] >= 200 for row in rows)
    assert all(row["object_store_mib"] is None for row in rows)


# Touches `size` MiB, then forks: parent and child share those pages (copy-on-write, never written again).
HOLD_SHARED = (
    "import os, sys; block = bytearray({size} * 2**20); block[::4096] = b'x' * len(block[::4096]); "
    "child = os.fork(); print('ready', flush=True) if child else None; sys.stdin.read()"
)


def test_summed_pss_counts_a_page_two_workers_share_once():
    process = subprocess.Popen(
        ["ray::FakeWorker", "-c", HOLD_SHARED.format(size=200)],
        executable=sys.executable,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "ready\n"
        with MemorySampler(interval=0.05, pss_every=0.2) as sampler:
            time.sleep(1.5)
    finally:
        process.stdin.close()  # both read the same stdin: both end
        process.wait(10)
    assert len(sampler._workers) == 2  # the child descends from the driver through its parent
    assert sampler.peak_workers >= 400 * MIB  # each process's RSS holds the 200 MiB
    assert sampler.peak_workers_anon >= 400 * MIB  # anonymous pages, in both heaps though shared
    assert 200 * MIB <= sampler.peak_workers_pss < 300 * MIB  # split between the two: once in all
    assert any(s.workers_pss == -1 for s in sampler.samples)  # read every 0.2 s, not every sweep


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
