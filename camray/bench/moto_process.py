"""moto's S3 server as a child process, for the tests and the benchmarks.

A process of its own, not moto's `ThreadedMotoServer` in the caller's: delta-rs holds the GIL through some of its
calls while it waits on the network (`DeltaTable.history()` did, for minutes), and a server thread of the same
process could then never answer them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

# moto imports its whole backend catalogue before it listens: seconds on a loaded machine.
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_child(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Ends a server child: SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class MotoProcess:
    """`with MotoProcess() as server:` moto's S3 on `server.endpoint` (`http://127.0.0.1:PORT`) until the block
    ends; `env` is added to the child's environment (e.g. `INITIAL_NO_AUTH_ACTION_COUNT`)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._recording: Path | None = None
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._env = env
        self._process: subprocess.Popen | None = None

    def start(self) -> str:
        import os

        # Where moto's recorder writes (`recorded_requests`), rather than a file in the caller's folder.
        self._recording = Path(tempfile.mkdtemp(prefix="moto-")) / "recording.jsonl"
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(self.port)],
            env={"MOTO_RECORDER_FILEPATH": str(self._recording), **os.environ, **(self._env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto exited with {self._process.returncode} before listening on {self.port}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self.endpoint
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"moto did not listen on {self.port} within {START_TIMEOUT_S:.0f} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            stop_child(self._process)
        if self._recording is not None:
            shutil.rmtree(self._recording.parent, ignore_errors=True)

    def __enter__(self) -> MotoProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def recorded_requests(endpoint: str) -> Iterator[list[dict]]:
    """`with recorded_requests(endpoint) as requests:` every request the moto server at `endpoint` answers while the
    block runs, whoever sends it (this process, a Ray worker, a submitted job), through moto's recorder API;
    `requests` is filled as the block ends, one dict each: `method`, `url` (as sent, with its query), `headers`."""

    def call(action: str) -> bytes:
        request = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.read()

    call("reset-recording")
    call("start-recording")
    requests: list[dict] = []
    try:
        yield requests
    finally:
        call("stop-recording")
        requests.extend(recorder_entries(call("download-recording").decode()))


def recorder_entries(text: str) -> Iterator[dict]:
    """The records of moto's recorder file, read as a stream of JSON objects rather than lines: the server's threads
    append a record and its newline in two writes, so a record too large for the file's buffer can end on the line
    of another thread's record, with both newlines after it."""
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return
        entry, position = decoder.raw_decode(text, position)
        yield entry
