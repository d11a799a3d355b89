"""A benchmark's child process with its memory watched: peak RSS sampled from /proc and the kernel's own
high-water mark, wall time, exit status; optionally stopped once above a cap. Used by `bench-history` and
`bench-month`, whose drivers and exports run as fresh processes so that each peak is that process's alone."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Measured:
    """One process: its peak RSS (bytes), wall time, exit status, and whether it was stopped at the cap."""

    peak_rss: int
    seconds: float
    returncode: int
    capped: bool = False


class SampledProcess:
    """Starts `command` (its output to `log`) and samples its memory every 50 ms until it ends; `wait()` gives
    the measures. The peak is the kernel's high-water mark of the process's memory since its exec (`VmHWM`), as
    last read before it ended: growth in its last 50 ms is missed. Not `ru_maxrss` from `wait4`: Linux carries a
    process's high-water mark across exec, so that of a child forked from a large benchmark would be at least the
    benchmark's own (a child that does nothing measured 512 MiB under a 500 MiB parent). Above `cap_bytes` (its
    current RSS) the process group is SIGKILLed (`capped`)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, cap_bytes: int | None = None) -> None:
        self._cap = cap_bytes
        self._clock = time.perf_counter()
        with log.open("w") as out:
            self._process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self._process.pid
        self._measured: Measured | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        peak, capped = 0, False
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            rss, high_water = _memory(self.pid)
            peak = max(peak, high_water)
            if self._cap is not None and rss > self._cap and not capped:
                capped = True
                os.killpg(self.pid, signal.SIGKILL)
            time.sleep(SAMPLE_SECONDS)
        returncode = os.waitstatus_to_exitcode(status)
        self._process.returncode = returncode  # reaped here: Popen must not wait for it again
        self._measured = Measured(peak, time.perf_counter() - self._clock, returncode, capped)

    def running(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        """SIGKILL to the process alone (not its group), as an OOM killer or a lost node would."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> Measured:
        self._thread.join(timeout)
        if self._measured is None:
            raise TimeoutError(f"process {self.pid} still running after {timeout} s")
        return self._measured


def measure_process(command: list[str], env: dict[str, str], log: Path, cap_bytes: int | None = None) -> Measured:
    """Runs `command` to its end under a `SampledProcess`."""
    return SampledProcess(command, env, log, cap_bytes).wait()


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, VmHWM) of a live process in bytes; zeros once it is gone (or a zombie, whose memory is released)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    kib = dict(line.split(":", 1) for line in status.splitlines() if line.startswith(("VmRSS:", "VmHWM:")))
    return tuple(int(kib.get(name, "0 kB").split()[0]) * 1024 for name in ("VmRSS", "VmHWM"))
