"""The quiet terminal: a run shows its progress and summary; Ray's lines go to the run's log under `_logs/`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from camray.logs import LOGGED_PROGRESS_INTERVAL_S, Terminal, run_output, save_run_log

REPO = Path(__file__).resolve().parents[1]


def test_off_a_tty_the_status_is_a_line_now_and_then_and_the_last_one_always():
    stream = io.StringIO()
    terminal = Terminal(stream)
    terminal.status("camray: 1 images")  # within the first interval: not written
    terminal.line("camray: a warning")
    terminal._status_written_at -= LOGGED_PROGRESS_INTERVAL_S
    terminal.status("camray: 2 images")
    terminal.status("camray: 3 images")  # again within an interval
    terminal.status("camray: 4 images", final=True)
    terminal.close()
    assert stream.getvalue().splitlines() == ["camray: a warning", "camray: 2 images", "camray: 4 images"]


def _drained(pty: int) -> bytes:
    """All a pty's other end wrote: one read returns what has arrived so far, which may be part of it."""
    chunks = []
    while True:
        try:
            chunk = os.read(pty, 4096)
        except OSError:  # EIO once the other end is closed and everything it wrote was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_on_a_tty_the_status_is_redrawn_in_place_with_lines_above_it():
    reader, writer = os.openpty()
    stream = os.fdopen(writer, "w")
    terminal = Terminal(stream)
    assert terminal.interactive
    terminal.status("camray: 1 images")
    terminal.line("camray: a warning")
    terminal.status("camray: 2 images")
    terminal.close()
    stream.close()
    shown = _drained(reader).decode()
    os.close(reader)
    clear = "\r\x1b[K"
    # The tty turns "\n" into "\r\n".
    assert shown == (f"{clear}camray: 1 images{clear}camray: a warning\r\ncamray: 1 images{clear}camray: 2 images\r\n")


def test_what_a_run_prints_goes_to_its_log_and_its_warnings_to_the_terminal_too(tmp_path, capfd):
    import logging

    saved = tmp_path / "out" / "_logs" / "run-a01-log.txt"
    with run_output():
        os.write(1, b"printed to fd 1\n")
        os.write(2, b"[E core_worker.cc] written to fd 2 by C++\n")
        logging.getLogger("camray.runner").warning("a warning the user must see")
        save_run_log(str(saved), lambda data: (saved.parent.mkdir(parents=True), saved.write_bytes(data)))
    shown = capfd.readouterr()
    log = saved.read_text()
    assert "printed to fd 1" in log and "core_worker.cc" in log
    assert "printed to fd 1" not in shown.out + shown.err and "core_worker" not in shown.out + shown.err
    assert shown.err.splitlines() == ["camray: a warning the user must see", f"log: {saved}"]
    save_run_log(str(tmp_path / "elsewhere.txt"), (tmp_path / "elsewhere.txt").write_bytes)  # outside a run: none
    assert not (tmp_path / "elsewhere.txt").exists()


@pytest.mark.integration
def test_a_run_shows_progress_and_summary_and_leaves_rays_lines_in_its_log(ray_address, small_photos, tmp_path):
    output = tmp_path / "out"
    ran = subprocess.run(
        [sys.executable, "jobs/cam_batch.py", "--input", str(small_photos), "--output", str(output)]
        + ["--source.limit", "12", "--runtime.batch_size", "4", "--runtime.decode_batch_size", "4"],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": ray_address},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    (log,) = (output / "_logs").glob("*-a01-log.txt")
    run_id = log.name.removesuffix("-a01-log.txt")
    # Off a TTY, a progress line every 30 s (a loaded machine may take that long), then the last count.
    *progress, last, log_line = ran.stderr.splitlines()
    assert all(line.startswith("camray: ") and " images processed, " in line for line in progress), ran.stderr
    assert last.startswith("camray: 12 images processed, ") and " images/s, " in last
    assert log_line == f"log: {log}"
    summary, *examples = ran.stdout.splitlines()
    assert summary.startswith(f"camray run {run_id} succeeded: 12 listed") and len(examples) == 5
    written = log.read_text()
    # camray's INFO lines, Ray Data's, and the core worker's line about actor restarts (ray-project/ray#57733).
    assert f"run {run_id}: 12 listed" in written and "Starting execution of Dataset" in written
    assert "core_worker.cc" in written
