"""The driver killed or stopped mid-run, and two runs on one output: real driver processes on a real Ray head,
faults sent as real signals, outputs on local disk and on the moto S3 server. Exactly-once is asserted over what
readers see: the Delta tables' current versions, read by `deltalake`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from container_inputs import write_shard
from ray_helpers import SMALL_BATCHES
from readers import runs, succeeded_inputs

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _driver(ray_address: str, source: Path, output: Path | str, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "jobs/cam_batch.py",
        "--input",
        str(source),
        "--output",
        str(output),
        *SMALL_BATCHES,
        # One predictor actor: these faults hit the driver, and a second actor would only add its start-up.
        "--runtime.num_actors",
        "1",
        *extra,
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _staged_rows(output: Path | str) -> int:
    """Rows of the files the write tasks staged (in the table folders, under a run's names), not yet committed."""
    import pyarrow.fs as pafs

    from camray.io.layout import REWRITE_PREFIX, file_attempt
    from camray.io.sources import S3Settings, filesystem_for

    rows = 0
    for table in ("results", "errors"):
        fs, folder = filesystem_for(f"{output}/{table}", S3Settings())
        for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            name = info.base_name
            if info.type == pafs.FileType.File and file_attempt(name) and not name.startswith((".", REWRITE_PREFIX)):
                try:
                    rows += pq.read_metadata(info.path, filesystem=fs).num_rows
                except OSError:  # being written right now
                    pass
    return rows


def _wait_for_staged(output: Path | str, at_least: int, driver: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        staged = _staged_rows(output)
        if staged >= at_least:
            return staged
        if driver.poll() is not None:
            raise AssertionError(
                f"the driver ended before {at_least} rows were staged:\n{driver.stdout.read()[-3000:]}"
            )
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} rows staged after {timeout} s")


def _finish(driver: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = driver.communicate(timeout=timeout)
    return driver.returncode, out


def _inputs(source: Path) -> set[str]:
    return {str(path) for path in source.iterdir()}


def test_a_killed_driver_is_resumed_not_redone(ray_address, s3_server, small_photos):
    """On the S3 server: the killed attempt's staged files are found by their run's prefix, and committed by the
    resumed attempt with its own."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="camray-killed-driver")
    output = "s3://camray-killed-driver/out"
    total = len(_inputs(small_photos))
    first = _driver(ray_address, small_photos, output)
    staged = _wait_for_staged(output, total // 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not runs(output), "a killed driver writes no runs row"
    assert not succeeded_inputs(output), "readers see nothing of a killed run"

    code, log = _finish(_driver(ray_address, small_photos, output))
    assert code == 0, log[-4000:]
    assert "took over the lease" in log and "resuming run" in log
    rows = runs(output)
    assert [row["status"] for row in rows] == ["succeeded"] and rows[0]["attempt"] == 2
    processed = rows[0]["results"] + rows[0]["errors"] - rows[0]["resumed"]
    assert rows[0]["resumed"] >= staged and processed <= 0.6 * total, rows[0]
    seen = succeeded_inputs(output)
    assert set(seen) == _inputs(small_photos) and set(seen.values()) == {1}


def test_a_driver_killed_mid_shard_is_resumed_and_every_sample_appears_once(ray_address, small_photos, tmp_path):
    """WebDataset shards on local disk: the resumed attempt skips the shards its predecessor finished and the
    samples it staged of the others, by key."""
    photos = sorted(small_photos.iterdir())
    shards = tmp_path / "shards"
    for s in range(3):
        samples = {
            f"{i:03d}": {"jpg": path.read_bytes(), "cls": str(i)} for i, path in enumerate(photos[16 * s :][:16])
        }
        write_shard(shards / f"shard-{s}.tar", samples)
    expected = {f"{shards}/shard-{s}.tar#{i:03d}" for s in range(3) for i in range(16)}
    output = tmp_path / "out"
    first = _driver(ray_address, shards, output)
    staged = _wait_for_staged(output, len(expected) // 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not succeeded_inputs(output), "readers see nothing of a killed run"

    code, log = _finish(_driver(ray_address, shards, output))
    assert code == 0, log[-4000:]
    assert "resuming run" in log
    [row] = runs(output)
    assert (row["status"], row["attempt"], row["listed"]) == ("succeeded", 2, 3)
    processed = row["results"] + row["errors"] - row["resumed"]
    assert row["resumed"] >= staged and processed <= 0.6 * len(expected), row
    seen = succeeded_inputs(output)
    assert set(seen) == expected and set(seen.values()) == {1}


def test_sigterm_ends_the_run_cleanly_and_the_next_run_finishes_it(ray_address, small_photos, tmp_path):
    output = tmp_path / "out"
    first = _driver(ray_address, small_photos, output)
    _wait_for_staged(output, 8, first)
    first.send_signal(signal.SIGTERM)
    code, log = _finish(first, timeout=120)
    assert code == 1, log[-4000:]
    assert "interrupted" in log
    [row] = runs(output)
    assert row["status"] == "interrupted" and "SIGTERM" in row["message"]
    assert not (output / "_lease.json").exists(), "the lease is released"
    kept = _staged_rows(output)
    assert kept >= 8, "the work done so far is kept"
    assert not succeeded_inputs(output)

    code, log = _finish(_driver(ray_address, small_photos, output))
    assert code == 0, log[-4000:]
    final = [row for row in runs(output) if row["status"] == "succeeded"]
    assert len(final) == 1 and final[0]["run_id"] == row["run_id"] and final[0]["resumed"] >= kept
    seen = succeeded_inputs(output)
    assert set(seen) == _inputs(small_photos) and set(seen.values()) == {1}


def test_two_runs_on_one_output_one_refuses_then_one_waits(ray_address, small_photos, tmp_path):
    output = tmp_path / "out"
    first = _driver(ray_address, small_photos, output)
    deadline = time.monotonic() + 120
    while not (output / "_lease.json").exists():
        assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lease"
        time.sleep(0.1)

    refused = subprocess.run(
        [sys.executable, "jobs/cam_batch.py", "--input", str(small_photos), "--output", str(output)],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": ray_address},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 3, refused.stdout + refused.stderr
    holder = json.loads((output / "_lease.json").read_text())
    assert f"leased by run {holder['run_id']}" in refused.stderr and f"until {holder['expires_at']}" in refused.stderr

    waiting = _driver(ray_address, small_photos, output, "--wait-for-lease", "600")
    code_first, log_first = _finish(first)
    code_waiting, log_waiting = _finish(waiting)
    assert code_first == 0, log_first[-4000:]
    assert code_waiting == 0, log_waiting[-4000:]
    statuses = sorted(row["status"] for row in runs(output))
    assert statuses == ["succeeded", "succeeded"]
    # The waiting run started after the first committed: incremental, it found everything done.
    assert sorted(row["skipped"] for row in runs(output)) == [0, len(_inputs(small_photos))]
    seen = succeeded_inputs(output)
    assert set(seen) == _inputs(small_photos) and set(seen.values()) == {1}
