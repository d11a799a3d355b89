"""Fault tests for the object store: a flaky S3 (slow-downs, resets, delays) and an S3 that is down for good.

The faults are real: `camray.bench.s3_proxy.FaultyS3Proxy` stands between the job and the moto server and breaks HTTP
exchanges on the wire, delta-rs's commits included. Jobs run on the real Ray head, and what readers see is read back
from moto directly, the Delta tables by `deltalake`.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pyarrow.fs as pafs
import pytest
from PIL import Image
from readers import delta_rows, runs, succeeded_inputs

from camray import cli
from camray.bench.s3_proxy import FaultRates, FaultyS3Proxy
from camray.config import JobConfig
from camray.io.s3 import S3Settings, StoreUnavailableError, s3_objects
from camray.io.sources import filesystem_for, write_object
from camray.runner import run_job

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BUCKET = "camray-flaky"
PAGED_BUCKET = "camray-paged"
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
SIDES = (64, 96, 128, 160, 192, 224)
RETRIES_LINE = re.compile(r"run (\S+): (\d+) S3 retries \(read (\d+), write (\d+)\)")


@pytest.fixture(scope="module")
def uploaded(s3_server: str, photos: dict[str, bytes]) -> dict[str, bytes]:
    """36 real photos (six, each at six sizes) and two broken files, put to moto directly, not through a proxy."""
    files: dict[str, bytes] = {}
    for name, data in photos.items():
        image = Image.open(io.BytesIO(data)).convert("RGB")
        for side in SIDES:
            copy = image.copy()
            copy.thumbnail((side, side))
            encoded = io.BytesIO()
            copy.save(encoded, format="JPEG", quality=85)
            files[f"images/{name.rsplit('.', 1)[0]}-{side}.jpg"] = encoded.getvalue()
    jpeg = photos["grace_hopper.jpg"]
    files["images/broken/truncated.jpg"] = jpeg[: len(jpeg) // 3]
    files["images/broken/notes.png"] = b"shopping list: milk, eggs\n"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=BUCKET)
    for key, data in files.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return files


@pytest.fixture
def dead_endpoint() -> Iterator[str]:
    """An endpoint that refuses connections: a port bound (so no one else takes it) but never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# A store that refuses every connection is given up on after its attempts, within seconds (the messages say how
# many attempts); still trying after this long, a run would be retrying without bound, or hanging on a socket.
GIVE_UP_DEADLINE_S = 600.0


def _ends_within_deadline(call: Callable[[], T]) -> T:
    """`call()`, run in a thread that must end within `GIVE_UP_DEADLINE_S`: its result, or the exception it raised."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="gives-up", daemon=True)
    thread.start()
    thread.join(GIVE_UP_DEADLINE_S)
    assert not thread.is_alive(), f"still trying a dead store after {GIVE_UP_DEADLINE_S:.0f} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _seen_by_readers(output: str) -> tuple[list[dict], list[str]]:
    """The `runs` rows, and the image URIs of the current rows of results and errors."""
    seen = succeeded_inputs(output)
    return runs(output), sorted(seen.elements())


def _committed_files(output: str, s3_server: str, run_id: str) -> int:
    """The run's Parquet files in `results/` and `errors/`."""
    fs, base = filesystem_for(output, S3Settings(endpoint_url=s3_server))
    return sum(
        info.base_name.startswith(run_id)
        for kind in ("results", "errors")
        for info in fs.get_file_info(pafs.FileSelector(f"{base}/{kind}", allow_not_found=True))
    )


def _faults(log: list[tuple[str, str, str]], method: str, path: str, suffix: str = "") -> tuple[int, Counter[str]]:
    """Requests of `method` whose target starts with `path` (and ends with `suffix`), and the faults among them."""
    hits = [fault for m, target, fault in log if m == method and target.startswith(path) and target.endswith(suffix)]
    return len(hits), Counter(fault for fault in hits if fault != "ok")


def test_flaky_store_run_succeeds_exactly_once_with_bounded_counted_retries(
    ray_cluster: str, s3_server: str, uploaded: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    output = f"s3://{BUCKET}/out-flaky"
    with FaultyS3Proxy(s3_server, seed=20261125, deadline_s=240) as proxy:
        config = JobConfig.model_validate(
            {
                "source": {"uri": f"s3://{BUCKET}/images"},
                "storage": {"s3_endpoint_url": proxy.endpoint},
                "sink": {"uri": output},
                "runtime": {"batch_size": 8, "decode_batch_size": 8},
            }
        )
        with caplog.at_level(logging.INFO, logger="camray.runner"):
            summary = run_job(config)
    log = list(proxy.log)

    assert summary.status == "succeeded"
    run_rows, seen = _seen_by_readers(output)
    expected = sorted(f"s3://{BUCKET}/{key}" for key in uploaded)
    assert sorted(seen) == expected  # every input once: none lost, none twice
    assert (summary.results, summary.errors) == (36, 2)

    # The faults really happened, on the job's own reads and writes (forced once each, then at the rates).
    reads, read_faults = _faults(log, "GET", f"/{BUCKET}/images/")
    # The staged files, put by the write tasks in the tables' folders; not the runs row, nor delta-rs's log entries,
    # whose retries it keeps to itself.
    writes, write_faults = _faults(log, "PUT", f"/{BUCKET}/out-flaky/results/", ".parquet")
    error_writes, error_faults = _faults(log, "PUT", f"/{BUCKET}/out-flaky/errors/", ".parquet")
    writes, write_faults = writes + error_writes, write_faults + error_faults
    assert set(read_faults) == set(write_faults) == {"slowdown", "reset", "delay"}
    assert sum(proxy.injected().values()) > sum(proxy.forced.values())  # the random draws injected faults too

    # Counted: the log line and the runs row agree; each slow-down or reset cost exactly one retry, and each
    # retry was one more request on the wire, beyond one per image read and one per file written.
    (run,) = run_rows
    lines = [m for m in map(RETRIES_LINE.search, caplog.messages) if m and m.group(1) == summary.run_id]
    assert len(lines) == 1
    total, read_retries, write_retries = (int(lines[0].group(i)) for i in (2, 3, 4))
    assert run["io_retries"] == total == read_retries + write_retries
    assert read_retries == read_faults["slowdown"] + read_faults["reset"] == reads - len(uploaded)
    files = _committed_files(output, s3_server, summary.run_id)
    assert write_retries == write_faults["slowdown"] + write_faults["reset"] == writes - files
    # Bounded: no transfer took more than its attempts.
    assert read_retries <= len(uploaded) * (2 * S3Settings().max_attempts - 2)
    assert write_retries <= files * (S3Settings().max_attempts - 1)


@pytest.mark.parametrize("down", ["input", "output"])
def test_store_down_for_good_fails_the_run_in_bounded_time_naming_endpoint_and_operation(
    down: str,
    ray_cluster: str,
    s3_server: str,
    uploaded: dict[str, bytes],
    photos: dict[str, bytes],
    dead_endpoint: str,
    tmp_path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the operator sees: `camray run` exits 1 with one line on stderr, not a traceback. The first S3
    operation of the run meets the dead store: listing the input, or taking the output's lease."""
    local = tmp_path / "images"
    local.mkdir()
    (local / "chelsea.png").write_bytes(photos["chelsea.png"])
    remote = f"s3://{BUCKET}/images" if down == "input" else f"s3://{BUCKET}/out-down"
    source, sink = (remote, str(tmp_path / "out")) if down == "input" else (str(local), remote)
    argv = [
        *("--input", source, "--output", sink),
        *("--storage.s3_endpoint_url", dead_endpoint, "--storage.s3_max_attempts", "3"),
    ]
    assert _ends_within_deadline(lambda: cli.main(argv)) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    if down == "input":  # the input's listing, through pyarrow
        assert line.startswith(f"camray: S3 listing of {remote} on {dead_endpoint} failed (up to 3 attempts)"), line
        assert re.search(r"during \w+ operation", line), line  # pyarrow's words for the S3 operation
    else:  # the output's lease, the run's first write, through boto3
        expected = f"camray: S3 PutObject {remote}/_lease.json on {dead_endpoint} failed after 3 attempts: "
        assert line.startswith(expected) and "connect" in line.lower(), line


@pytest.fixture(scope="module")
def paged(s3_server: str) -> str:
    """A prefix of 2,001 small objects: three pages of ListObjectsV2, of 1,000 keys at most."""
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=PAGED_BUCKET)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: client.put_object(Bucket=PAGED_BUCKET, Key=f"images/{i:05d}.jpg", Body=b"x"), range(2001)
            )
        )
    return f"s3://{PAGED_BUCKET}/images"


@pytest.mark.parametrize(
    ("failing_from", "fault"), [(2, "slowdown"), (3, "reset")], ids=["after-the-first-page", "at-the-last-page"]
)
def test_a_listing_that_fails_midway_fails_the_run_naming_the_store(
    failing_from: int, fault: str, s3_server: str, paged: str, tmp_path
) -> None:
    """The store answers the first pages, then fails every attempt at a later one (503 SlowDown, or the answer
    cut off): `camray run` exits 1 with one line naming the operation, the input and the endpoint, the run's log
    keeps the traceback, and the runs row says the same; nothing of the listing is processed or left behind."""
    output = tmp_path / "out"
    quiet = FaultRates(slowdown=0.0, reset=0.0, delay=0.0)
    with FaultyS3Proxy(
        s3_server,
        seed=5,
        rates=quiet,
        force_each=False,
        list_pages_failing_from=failing_from,
        list_fault=fault,
        deadline_s=120,
    ) as proxy:
        argv = ["--input", paged, "--output", str(output)]
        argv += ["--storage.s3_endpoint_url", proxy.endpoint, "--storage.s3_max_attempts", "3"]
        ran = subprocess.run(
            [sys.executable, "jobs/cam_batch.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=300
        )
    assert ran.returncode == 1, ran.stderr[-4000:]
    # Where the run's log went (it holds the traceback), then the one line that says why.
    saved, line = ran.stderr.strip().splitlines()
    log = Path(saved.removeprefix("log: "))
    assert log.parent == output / "_logs" and "Traceback" in log.read_text() and "Traceback" not in ran.stderr
    assert line.startswith(f"camray: S3 ListObjectsV2 {paged} on {proxy.endpoint} failed after 3 attempts: "), line
    pages = [(target, result) for method, target, result in proxy.log if "list-type=2" in target]
    answered = [target for target, result in pages if result == "ok" and "continuation-token" in target]
    failed = [target for target, result in pages if result == fault]
    assert len(answered) == failing_from - 2 and len(failed) == 3  # the pages before, then every attempt
    (run,) = runs(output)
    assert run["status"] == "failed" and run["message"] == line.removeprefix("camray: ")
    assert delta_rows(output, "results").num_rows == delta_rows(output, "errors").num_rows == 0
    assert not any((output / "_listing").iterdir())


def test_store_down_for_good_fails_reads_in_bounded_time_naming_endpoint_and_operation(
    ray_cluster: str, s3_server: str, uploaded: dict[str, bytes], dead_endpoint: str, tmp_path
) -> None:
    """Listing works (a local manifest), then every read meets the dead store: the run fails, it does not
    record the images as errors of a succeeded run."""
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"s3://{BUCKET}/{key}\n" for key in sorted(uploaded)[:6]))
    output = tmp_path / "out"
    config = JobConfig.model_validate(
        {
            "source": {"uri": str(manifest)},
            "storage": {"s3_endpoint_url": dead_endpoint, "s3_max_attempts": 3},
            "sink": {"uri": str(output)},
            "runtime": {"batch_size": 4, "decode_batch_size": 2},
        }
    )
    with pytest.raises(StoreUnavailableError) as failure:
        _ends_within_deadline(lambda: run_job(config))
    # One line, not Ray's traceback: the operation, the object, the endpoint, the attempts, the cause.
    message = str(failure.value)
    assert "\n" not in message, message
    pattern = rf"^S3 GetObject s3://{BUCKET}/\S+ on {re.escape(dead_endpoint)} failed after 3 attempts: .*connect"
    assert re.search(pattern, message), message
    assert [run["status"] for run in runs(output)] == ["failed"]
    assert delta_rows(output, "results").num_rows == delta_rows(output, "errors").num_rows == 0


def test_counted_retries_match_injected_faults_exactly(s3_server: str, uploaded: dict[str, bytes]) -> None:
    """Alone on a connection, each injected slow-down or reset is exactly one counted retry, reads and writes;
    a body cut mid-way is read again, and a body cut every time fails naming the endpoint."""
    rates = FaultRates(slowdown=0.2, reset=0.2, delay=0.0, delay_seconds=0.1)  # delays cost no retry: keep them short
    key = sorted(uploaded)[0]
    with FaultyS3Proxy(s3_server, seed=7, rates=rates, deadline_s=120) as proxy:
        settings = S3Settings(endpoint_url=proxy.endpoint, max_attempts=8)
        read_retries = 0
        for _ in range(20):
            data, retries = s3_objects(settings).get(f"s3://{BUCKET}/{key}")
            assert data == uploaded[key]
            read_retries += retries
        write_retries = sum(
            write_object(f"s3://{BUCKET}/counted/{i}.bin", bytes(range(256)) * 64, settings) for i in range(20)
        )
        _, read_faults = _faults(proxy.log, "GET", f"/{BUCKET}/{key}")
        _, write_faults = _faults(proxy.log, "PUT", f"/{BUCKET}/counted/")
    assert read_faults["reset"] > 0 and read_faults["slowdown"] > 0
    assert write_faults["reset"] > 0 and write_faults["slowdown"] > 0
    assert read_retries == read_faults["reset"] + read_faults["slowdown"]
    assert write_retries == write_faults["reset"] + write_faults["slowdown"]

    with FaultyS3Proxy(s3_server, seed=7, rates=FaultRates(0.0, 1.0, 0.0), deadline_s=60, force_each=False) as proxy:
        settings = S3Settings(endpoint_url=proxy.endpoint, max_attempts=2)
        with pytest.raises(StoreUnavailableError, match=rf"GetObject .* on {re.escape(proxy.endpoint)} failed after"):
            s3_objects(settings).get(f"s3://{BUCKET}/{key}")
        with pytest.raises(StoreUnavailableError, match=rf"PutObject .* on {re.escape(proxy.endpoint)} failed after 2"):
            write_object(f"s3://{BUCKET}/counted/cut.bin", b"x" * 4096, settings)
