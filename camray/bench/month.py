"""A month of nights: `make bench-month` or `python -m camray.bench.month [--nights 30]`.

One output on a bucket of the moto S3 server, one run a night for `--nights` nights, each a fresh driver process
(`camray run`, as a nightly cron starts it) on one Ray cluster started beforehand. Before each night the bucket
changes: `--new` new images (small crops of the sample photos, each a distinct object), `--rewritten` old ones
written again (a new version), `--deleted` removed. On chosen nights, real faults:
- `driver-killed`: the driver SIGKILLed once some of its rows are staged, then the night's run started again;
- `actor-killed`: a predictor actor's process SIGKILLed mid-run (Ray restarts it and retries its batches);
- `s3-503`: every S3 request of the night, the driver's and the workers', through the fault proxy
  (`camray.bench.s3_proxy`), which answers 10% of them with `503 SlowDown`;
- `overlap`: a second run started on the output while the first runs (it is refused: the output is leased).
After the last night, every image listed on any night must have exactly one current row (a Delta output's current
version), of the version last listed, and no current row a version never listed. Prints night by night the
driver's peak RSS, the wall time and the rows skipped and processed, draws them (`--plot`, PNG) and writes
`data/bench-month-results.json`. Target: the last night's driver peak <= 1.2x the first's, and exactly-once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from camray.bench.process import Measured, SampledProcess

BUCKET = "camray-month"
SOURCE = f"s3://{BUCKET}/images"
OUTPUT = f"s3://{BUCKET}/out"
FAULTS = ("driver-killed", "actor-killed", "s3-503", "overlap")
MEMORY_RATIO = 1.2
# Small staged files, so that a run killed mid-way has some to resume from; small batches, for the same reason.
RUN_FLAGS = ["--preset", "fast", "--sink.rows_per_file", "16", "--runtime.batch_size", "8"]
PREDICTOR_TITLE = re.compile(r"^ray::MapWorker\(MapBatches\(Predictor\)\)")


@dataclass
class Night:
    night: int
    fault: str
    listed: int = 0
    skipped: int = 0
    processed: int = 0
    resumed: int = 0
    peak_driver_mib: float = 0.0
    seconds: float = 0.0
    statuses: list[str] = field(default_factory=list)
    note: str = ""


class ChangingBucket:
    """The input bucket, changed night by night with small JPEGs cut from the sample photos."""

    def __init__(self, client, seed: int) -> None:
        from PIL import Image

        from camray.samples import sample_photos

        self.client = client
        self.rng = random.Random(seed)
        self.photos = [Image.open(path).convert("RGB") for _, path in sorted(sample_photos().items())]
        self.keys: list[str] = []
        self.made = 0

    def _jpeg(self) -> bytes:
        from PIL import Image

        photo = self.rng.choice(self.photos)
        width, height = self.rng.randint(48, 96), self.rng.randint(48, 96)
        side = self.rng.randint(max(width, height), min(photo.size))
        x, y = self.rng.randint(0, photo.width - side), self.rng.randint(0, photo.height - side)
        crop = photo.crop((x, y, x + side, y + side)).resize((width, height), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=self.rng.randint(75, 95))
        return buffer.getvalue()

    def change(self, new: int, rewritten: int, deleted: int) -> None:
        for key in self.rng.sample(self.keys, min(deleted, len(self.keys))):
            self.client.delete_object(Bucket=BUCKET, Key=key)
            self.keys.remove(key)
        for key in self.rng.sample(self.keys, min(rewritten, len(self.keys))):
            self.client.put_object(Bucket=BUCKET, Key=key, Body=self._jpeg())
        for _ in range(new):
            key = f"images/{self.made // 500:03d}/{self.made:06d}.jpg"
            self.client.put_object(Bucket=BUCKET, Key=key, Body=self._jpeg())
            self.keys.append(key)
            self.made += 1

    def listed(self) -> set[tuple[str, str]]:
        """(uri, version) of every image now, versions as camray's listing makes them."""
        from camray.io.listing import iter_listing
        from camray.io.sources import S3Settings

        pairs = set()
        for chunk in iter_listing(SOURCE, [], True, S3Settings()):
            pairs.update(zip(chunk.column("uri").to_pylist(), chunk.column("version").to_pylist(), strict=True))
        return pairs


# A write task's file: in a Delta output's table folders (named by no log entry until the run commits), or in a
# Parquet output's `_staging/RUN_ID/`; not a commit's rewritten files.
_STAGED = re.compile(r"^out/(?:_staging/[^/]+/)?(?:results|errors)/(?!rewrite-)[^/]+-a\d+-\d+\.parquet$")


def _written_files(client) -> set[str]:
    """Every write task's file in the output now, committed or not."""
    keys = set()
    for prefix in ("out/_staging/", "out/results/", "out/errors/"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys.update(item["Key"] for item in page.get("Contents", []) if _STAGED.match(item["Key"]))
    return keys


def _staged_files(client, before: set[str]) -> int:
    """The files write tasks wrote since `before` (`_written_files` when the night began): the night's staged."""
    return len(_written_files(client) - before)


def _raylet_pid() -> int:
    import ray

    node = ray._private.worker._global_node
    return node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def _kill_a_predictor(raylet_pid: int, driver: SampledProcess, after_staged: int, client, before: set[str]) -> str:
    """Waits for `after_staged` staged files, then SIGKILLs one predictor actor of this cluster's raylet."""
    while driver.running() and _staged_files(client, before) < after_staged:
        time.sleep(0.2)
    while driver.running():
        for task in Path(f"/proc/{raylet_pid}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for pid in children:
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if PREDICTOR_TITLE.search(title):
                    os.kill(int(pid), 9)
                    return f"killed predictor actor pid {pid}"
        time.sleep(0.05)
    return "the run ended before a predictor actor could be killed"


class Month:
    def __init__(self, args: argparse.Namespace, endpoint: str, root: Path) -> None:
        import boto3

        self.args = args
        self.endpoint = endpoint
        self.root = root
        self.client = boto3.client("s3")
        self.client.create_bucket(Bucket=BUCKET)
        self.bucket = ChangingBucket(self.client, seed=args.seed)
        self.ever_listed: set[tuple[str, str]] = set()
        self.newest_listed: dict[str, str] = {}  # each image's version when last listed
        self.nights: list[Night] = []
        self.env = dict(os.environ)
        nights = [int(night) for night in args.fault_nights.split(",") if night.strip()]
        self.faults = dict(zip(nights, FAULTS, strict=False))

    def _driver(self, name: str, env: dict[str, str]) -> SampledProcess:
        command = [sys.executable, "-m", "camray.cli", "run", "--input", SOURCE, "--output", OUTPUT, *RUN_FLAGS]
        return SampledProcess(command, env, self.root / f"{name}.log")

    def _runs_since(self, started: datetime) -> list[dict]:
        from camray.io.output import Output

        runs = Output(OUTPUT).runs().to_pylist()
        return sorted((run for run in runs if run["started_at"] >= started), key=lambda run: run["started_at"])

    def night(self, index: int) -> Night:
        fault = self.faults.get(index, "")
        if index == 1:
            self.bucket.change(self.args.initial, 0, 0)
        else:
            self.bucket.change(self.args.new, self.args.rewritten, self.args.deleted)
        listed = self.bucket.listed()
        self.ever_listed |= listed
        self.newest_listed.update(listed)
        record = Night(index, fault or "-", listed=len(listed))
        # A run records its start at the second; the night's runs are those that started after this.
        started = datetime.now(UTC).replace(microsecond=0)
        time.sleep(1.0)
        name = f"night-{index:02d}"
        measured: list[Measured] = []
        before = _written_files(self.client)
        if fault == "driver-killed":
            first = self._driver(f"{name}-killed", self.env)
            while first.running() and _staged_files(self.client, before) < 1:
                time.sleep(0.1)
            first.kill()
            measured.append(first.wait())
            record.note = f"driver SIGKILLed with {_staged_files(self.client, before)} files staged; rerun"
            measured.append(self._driver(name, self.env).wait())
        elif fault == "actor-killed":
            driver = self._driver(name, self.env)
            record.note = _kill_a_predictor(_raylet_pid(), driver, 1, self.client, before)
            measured.append(driver.wait())
        elif fault == "s3-503":
            from camray.bench.s3_proxy import FaultRates, FaultyS3Proxy

            rates = FaultRates(slowdown=0.10, reset=0.0, delay=0.0)
            with FaultyS3Proxy(self.endpoint, seed=index, rates=rates, deadline_s=1800, force_each=False) as proxy:
                measured.append(self._driver(name, {**self.env, "AWS_ENDPOINT_URL": proxy.endpoint}).wait())
            counts = Counter(fault for (_, fault) in proxy.counts.elements())
            record.note = f"{counts['slowdown']} of {sum(counts.values())} S3 requests answered 503 SlowDown"
        elif fault == "overlap":
            first = self._driver(name, self.env)
            while first.running() and not self._holds_lease():
                time.sleep(0.1)
            second = self._driver(f"{name}-second", self.env).wait()
            measured.append(first.wait())
            record.note = f"second run exited {second.returncode} (3: the output is leased)"
        else:
            measured.append(self._driver(name, self.env).wait())
        if measured[-1].returncode != 0:  # a night that failed is run again, as the next cron would
            record.note += f"; run exited {measured[-1].returncode}, rerun"
            measured.append(self._driver(f"{name}-again", self.env).wait())
        runs = self._runs_since(started)
        succeeded = [run for run in runs if run["status"] == "succeeded"]
        record.statuses = [run["status"] for run in runs]
        record.skipped = sum(run["skipped"] for run in succeeded)
        record.processed = sum(run["results"] + run["errors"] for run in succeeded)
        record.resumed = sum(run["resumed"] or 0 for run in succeeded)
        record.peak_driver_mib = max(m.peak_rss for m in measured) / 2**20
        record.seconds = sum(m.seconds for m in measured)
        return record

    def _holds_lease(self) -> bool:
        return bool(self.client.list_objects_v2(Bucket=BUCKET, Prefix="out/_lease.json").get("KeyCount"))

    def exactly_once(self) -> dict[str, int]:
        """Every image ever listed against the output's current rows (a Delta output's current version; a Parquet
        one's newest row of each image among succeeded runs), counted in DuckDB: each must have exactly one, of the
        newest version listed, and no current row may be of a pair never listed."""
        import duckdb
        import pyarrow as pa

        from camray.io.output import Output

        output = Output(OUTPUT)
        current = pa.Table.from_batches(
            list(output.iter_latest_results(None, ["image_uri", "source_version"])),
            schema=pa.schema([("image_uri", pa.string()), ("source_version", pa.string())]),
        )
        listed = pa.table({"uri": [uri for uri, _ in self.ever_listed], "version": [v for _, v in self.ever_listed]})
        newest = pa.table({"uri": list(self.newest_listed), "version": list(self.newest_listed.values())})
        connection = duckdb.connect()
        for name, table in (("current", current), ("listed", listed), ("newest", newest)):
            connection.register(name, table)
        counts = connection.sql(
            """
            WITH rows_of AS (SELECT image_uri, count(*) AS n FROM current GROUP BY ALL)
            SELECT
                (SELECT count(*) FROM listed) AS listed,
                (SELECT count(*) FROM newest) AS images,
                (SELECT count(*) FROM newest JOIN current ON uri = image_uri AND version = source_version
                 JOIN rows_of USING (image_uri) WHERE n = 1) AS exactly_once,
                (SELECT count(*) FROM newest ANTI JOIN current ON uri = image_uri) AS missing,
                (SELECT count(*) FROM newest JOIN current ON uri = image_uri WHERE version != source_version)
                    AS stale,
                (SELECT count(*) FROM rows_of WHERE n > 1) AS duplicated,
                (SELECT count(*) FROM current ANTI JOIN listed ON uri = image_uri AND version = source_version)
                    AS never_listed
            """
        ).fetchall()[0]
        names = ("listed", "images", "exactly_once", "missing", "stale", "duplicated", "never_listed")
        outcome = dict(zip(names, counts, strict=True))
        outcome["error_rows"] = sum(batch.num_rows for batch in output.scan("errors", ["image_uri"]))
        outcome["delta"] = int(output.is_delta)
        return outcome


def plot(nights: list[Night], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [night.night for night in nights]
    figure, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(x, [night.peak_driver_mib for night in nights], marker="o")
    axes[0].set_ylabel("driver peak RSS (MiB)")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(x, [night.seconds for night in nights], marker="o", color="tab:orange")
    axes[1].set_ylabel("wall time (s)")
    axes[1].set_ylim(bottom=0)
    axes[2].bar(x, [night.processed for night in nights], label="processed")
    axes[2].bar(x, [night.skipped for night in nights], bottom=[night.processed for night in nights], label="skipped")
    axes[2].set_ylabel("images")
    axes[2].set_xlabel("night")
    axes[2].legend(loc="upper left")
    for night in nights:
        if night.fault != "-":
            for axis in axes:
                axis.axvline(night.night, color="grey", linestyle=":", linewidth=1)
            axes[0].annotate(night.fault, (night.night, 0), rotation=90, fontsize=7, va="bottom", ha="right")
    figure.suptitle("camray, one run a night: cost follows the night's new work, not the output's age")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _table(nights: list[Night]) -> str:
    lines = [
        f"{'night':>5} {'fault':<14} {'listed':>7} {'skipped':>8} {'processed':>10} {'resumed':>8} {'driver MiB':>11} "
        f"{'wall s':>7}  runs; note"
    ]
    for n in nights:
        lines.append(
            f"{n.night:>5} {n.fault:<14} {n.listed:>7} {n.skipped:>8} {n.processed:>10} {n.resumed:>8} "
            f"{n.peak_driver_mib:>11.0f} "
            f"{n.seconds:>7.1f}  {','.join(n.statuses)}{'; ' + n.note if n.note else ''}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--initial", type=int, default=300, help="images in the bucket before the first night")
    parser.add_argument("--new", type=int, default=150, help="new images a night")
    parser.add_argument("--rewritten", type=int, default=10, help="images written again a night (a new version)")
    parser.add_argument("--deleted", type=int, default=5, help="images deleted a night")
    parser.add_argument(
        "--fault-nights", default="5,10,15,20", help=f"the nights of the faults, in this order: {', '.join(FAULTS)}"
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--plot", default="docs/incremental-month.png")
    parser.add_argument("--output", default="data/bench-month-results.json")
    args = parser.parse_args(argv)

    from camray.bench.moto_process import MotoProcess

    server = MotoProcess()
    endpoint = server.start()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    import ray

    root = Path(tempfile.mkdtemp(prefix="camray-bench-month-"))
    # After AWS_*, which the workers inherit; a cluster of its own: with no address, ray.init() joins a cluster
    # another process started on the machine.
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    month = Month(args, endpoint, root)
    month.env["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "settings": {key: value for key, value in vars(args).items() if key not in ("plot", "output")},
    }
    try:
        print(_table([]), flush=True)
        for index in range(1, args.nights + 1):
            night = month.night(index)
            month.nights.append(night)
            print(_table([night]).splitlines()[1], flush=True)
            report["nights"] = [asdict(n) for n in month.nights]
            _write(report, args.output)
        outcome = month.exactly_once()
    finally:
        ray.shutdown()
        server.stop()
    report["exactly_once"] = outcome
    first, last = month.nights[0], month.nights[-1]
    ratio = last.peak_driver_mib / first.peak_driver_mib
    report["memory_ratio_last_first"] = ratio
    _write(report, args.output)
    plot(month.nights, Path(args.plot))
    held = outcome["exactly_once"] == outcome["images"] and not (outcome["duplicated"] or outcome["never_listed"])
    print(f"\nexactly-once: {outcome} -> {'held' if held else 'BROKEN'}")
    verdict = "met" if ratio <= MEMORY_RATIO else "MISSED"
    print(f"driver peak, last night / first: {ratio:.2f} (target <= {MEMORY_RATIO}: {verdict})")
    print(f"wrote {args.output} and {args.plot}; logs in {root}")
    if held:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if held else 1


def _write(report: dict[str, object], output: str) -> None:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
