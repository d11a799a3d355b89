"""Ray worker processes killed with SIGKILL in the middle of a run: a predictor actor, a read+decode task's
worker, a write task's worker. Ray Data's own retries and actor restarts carry the run; every input appears
exactly once among succeeded runs, with no rows doubled by a retried batch or write."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from readers import runs, succeeded_inputs

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# Ray titles a worker process after what it runs: `ray::MapWorker(MapBatches(Predictor))` for a predictor actor,
# `ray::MapBatches(read_decode_listing)` and `ray::Write` for tasks while they run (`ray::IDLE` between tasks).
TITLES = {
    "predictor actor": re.compile(r"^ray::MapWorker\(MapBatches\(Predictor\)\)"),
    "read+decode task": re.compile(r"^ray::.*MapBatches\(read_decode_listing\)"),
    "write task": re.compile(r"^ray::.*Write"),
}


def _children(pid: int) -> list[int]:
    """The processes `pid`'s threads forked (Ray workers are the raylet's children), from /proc's `children`
    files: a few reads a sweep, where reading every process on a shared machine 100 times a second would take
    a core from the run under test."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue  # a thread that just ended
    return found


def _workers(raylet_pid: int) -> dict[int, str]:
    """pid -> command line (Ray's title) of each worker process of the raylet."""
    out = {}
    for pid in _children(raylet_pid):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
    return out


class _Killer(threading.Thread):
    """Watches the head's worker processes and SIGKILLs the first one running `title`, once."""

    def __init__(self, raylet_pid: int, title: re.Pattern[str], deadline: float) -> None:
        super().__init__(daemon=True)
        self.raylet_pid, self.title, self.deadline = raylet_pid, title, deadline
        self.killed: tuple[int, str] | None = None

    def run(self) -> None:
        while self.killed is None and time.monotonic() < self.deadline:
            for pid, command in _workers(self.raylet_pid).items():
                if self.title.search(command):
                    os.kill(pid, signal.SIGKILL)
                    self.killed = (pid, command)
                    return
            time.sleep(0.01)


@pytest.mark.parametrize("victim", sorted(TITLES))
def test_a_killed_worker_loses_and_doubles_nothing(ray_head, ray_address, small_photos, tmp_path, victim):
    raylet_pid = ray_head.head_node.all_processes["raylet"][0].process.pid
    output = tmp_path / "out"
    killer = _Killer(raylet_pid, TITLES[victim], time.monotonic() + 300)
    killer.start()
    driver = subprocess.run(
        [
            sys.executable,
            "jobs/cam_batch.py",
            "--input",
            str(small_photos),
            "--output",
            str(output),
            "--runtime.batch_size",
            "4",
            "--runtime.decode_batch_size",
            "8",
            "--sink.rows_per_file",
            "4",
        ],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": ray_address},
        capture_output=True,
        text=True,
        timeout=600,
    )
    killer.deadline = 0
    killer.join()
    log = driver.stdout + driver.stderr
    assert killer.killed is not None, f"no {victim} was caught running"
    assert driver.returncode == 0, log[-4000:]
    [run] = runs(output)
    assert run["status"] == "succeeded" and run["results"] + run["errors"] == len(list(small_photos.iterdir()))
    seen = succeeded_inputs(output)
    assert set(seen) == {str(path) for path in small_photos.iterdir()} and set(seen.values()) == {1}
