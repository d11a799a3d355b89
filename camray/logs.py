"""The terminal and the run's log file.

During a run the terminal shows one live progress line (images done, images per second) and camray's warnings;
the summary follows once the run is over. Everything else printed in the driver goes to the run's log file:
camray's INFO lines, Ray's and Ray Data's log lines, and what Ray's C++ core worker writes to the process's
stderr. The only way to catch that last kind is at the file descriptors, so the run's stdout and stderr (fds 1
and 2) point at the log while the run lasts; the terminal keeps a duplicate of the original stderr. The runner
copies the log to the output's `_logs/` folder as the run ends (`save_run_log`).

The core worker's `E ... core_worker.cc ... has constructor arguments in the object store and max_restarts > 0`
line, printed at every run, is Ray Data's own doing, not camray's: Ray Data 2.60 hands every actor of a pool its
DataContext and its map function as object refs, and restarts pool actors by default (ray-project/ray#57733,
open). Turning restarts off would silence it and cost the pool its recovery from killed workers, so the line
goes to the log with the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ray.data._internal.execution.execution_callback import ExecutionCallback

if TYPE_CHECKING:
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

logger = logging.getLogger(__name__)

# How often the progress line is redrawn on a terminal, and written as a new line where the output is a file
# or a pipe (a `ray job submit` log, CI): often enough to show that the run moves, seldom enough to stay short.
REDRAW_INTERVAL_S = 0.25
LOGGED_PROGRESS_INTERVAL_S = 30.0
# Set on a record (`extra={LOG_ONLY: True}`) that belongs in the log alone, such as a failed run's traceback,
# whose one line the command line prints.
LOG_ONLY = "camray_log_only"
# Ray Data's list of extra execution callbacks, `module.Class` names read in the driver as a dataset is planned.
EXECUTION_CALLBACKS_ENV = "RAY_DATA_EXECUTION_CALLBACKS"


class Terminal:
    """The user's terminal: one status line redrawn in place (on a TTY) and whole lines written above it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self._status = ""
        self._status_written_at = time.monotonic()  # off a TTY, the first line after an interval
        self._lock = threading.Lock()

    def status(self, text: str, final: bool = False) -> None:
        """Shows `text` as the status line: in place on a TTY, else as a line at most every 30 s (and the last)."""
        with self._lock:
            now = time.monotonic()
            if self.interactive:
                if text == self._status and not final:
                    return
                self.stream.write("\r\033[K" + text + ("\n" if final else ""))
                self._status = "" if final else text
            elif final or now - self._status_written_at >= LOGGED_PROGRESS_INTERVAL_S:
                self.stream.write(text + "\n")
                self._status_written_at = now
            self.stream.flush()

    def line(self, text: str) -> None:
        """Writes `text` as a line of its own, above the status line."""
        with self._lock:
            if self.interactive and self._status:
                self.stream.write("\r\033[K" + text + "\n" + self._status)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.interactive and self._status:
                self.stream.write("\n")  # the last count stays on screen
                self._status = ""
            self.stream.flush()


class _TerminalHandler(logging.Handler):
    """camray's warnings and errors, which the user must see during a run, on the terminal as well as in the log."""

    def __init__(self, terminal: Terminal) -> None:
        super().__init__(level=logging.WARNING)
        self.terminal = terminal

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, LOG_ONLY, False):
            return
        try:
            self.terminal.line(f"camray: {record.getMessage()}")
        except Exception:  # a log line must never fail the run
            self.handleError(record)


@dataclass
class _Capture:
    log_path: Path
    terminal: Terminal


_active: _Capture | None = None


def progress_text(images: int, seconds: float) -> str:
    rate = images / seconds if seconds > 0 else 0.0
    minutes, secs = divmod(int(seconds), 60)
    return f"camray: {images:,} images processed, {rate:.1f} images/s, {minutes}:{secs:02d} elapsed"


class ProgressCallback(ExecutionCallback):
    """Draws the run's progress from Ray Data's own counts: the rows that the operator feeding the last one (the
    writer) has output, one per input, a result or an error. Ray Data calls it in the driver after each step of
    its streaming executor's scheduling loop."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def _draw(self, executor: StreamingExecutor, final: bool = False) -> None:
        capture = _active
        topology = executor._topology  # as Ray Data's own callbacks read it
        if capture is None or not topology:
            return
        now = time.monotonic()
        if not final and now - self._drawn_at < REDRAW_INTERVAL_S:
            return
        self._drawn_at = now
        writer = list(topology)[-1]
        annotator = writer.input_dependencies[0] if writer.input_dependencies else writer
        capture.terminal.status(
            progress_text(annotator.metrics.rows_task_outputs_generated, now - self._started), final
        )

    def before_execution_starts(self, executor: StreamingExecutor) -> None:
        self._started = time.monotonic()

    def on_execution_step(self, executor: StreamingExecutor) -> None:
        self._draw(executor)

    def after_execution_succeeds(self, executor: StreamingExecutor) -> None:
        self._draw(executor, final=True)

    def after_execution_fails(self, executor: StreamingExecutor, error: Exception) -> None:
        self._draw(executor, final=True)


@contextlib.contextmanager
def run_output() -> Iterator[Terminal]:
    """Routes all that the process prints to a temporary log file while a run lasts, and shows its progress.

    Yields the terminal; the log is saved to the output by `save_run_log` and removed on the way out."""
    global _active
    import ray.data

    sys.stdout.flush()
    sys.stderr.flush()
    saved_stdout, saved_stderr = os.dup(1), os.dup(2)
    log_fd, log_name = tempfile.mkstemp(prefix="camray-run-", suffix=".log")
    terminal = Terminal(os.fdopen(os.dup(saved_stderr), "w", encoding="utf-8", errors="replace"))
    handler = _TerminalHandler(terminal)
    context = ray.data.DataContext.get_current()
    progress_bars = context.enable_progress_bars
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    logging.getLogger("camray").addHandler(handler)
    # Ray Data's bars (tqdm) or, off a TTY, its progress log lines would go to the log; camray draws its own.
    context.enable_progress_bars = False
    # Named in the environment rather than in `context.custom_execution_callback_classes`: the DataContext is
    # pickled to every task and actor, and the callback belongs to the driver alone.
    callbacks = os.environ.get(EXECUTION_CALLBACKS_ENV)
    os.environ[EXECUTION_CALLBACKS_ENV] = ",".join(filter(None, [callbacks, f"{__name__}.ProgressCallback"]))
    _active = _Capture(Path(log_name), terminal)
    try:
        yield terminal
    finally:
        _active = None
        if callbacks is None:
            os.environ.pop(EXECUTION_CALLBACKS_ENV, None)
        else:
            os.environ[EXECUTION_CALLBACKS_ENV] = callbacks
        context.enable_progress_bars = progress_bars
        logging.getLogger("camray").removeHandler(handler)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_stdout, 1)
        os.dup2(saved_stderr, 2)
        os.close(saved_stdout)
        os.close(saved_stderr)
        terminal.close()
        terminal.stream.close()
        Path(log_name).unlink(missing_ok=True)


def save_run_log(uri: str, write: Callable[[bytes], object]) -> None:
    """Hands the log of the run in progress to `write` (which puts it at `uri`) and names it on the terminal; does
    nothing outside `run_output`. A log that cannot be written is a warning: it must not fail the run."""
    capture = _active
    if capture is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        write(capture.log_path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more than its log
        logger.warning("could not save the run's log to %s: %s", uri, exc)
        return
    capture.terminal.line(f"log: {uri}")
