"""Containers benchmark: `make bench-containers` or `python -m camray.bench.containers [--images 10000]
[--memory-samples 5000,50000] [--input-size 64]`.

On the moto S3 server (a process of its own, which counts every request it serves by method and key prefix):
1. The same `--images` small JPEGs (bench-scale's 64-128 px crops) as loose objects, as 10 WebDataset shards
   (`KEY.jpg` and `KEY.cls` members) and as 10 Parquet files in the `datasets` layout (`image` {bytes, path},
   `label`, row groups of 100 as `datasets` writes image tables): the whole job over each on one local Ray
   cluster, output on local disk, `--repeats` times in alternating order (the best time of each counts: the host
   may be shared). Wall time, the input's GET, HEAD and LIST requests, and the driver's peak RSS of each.
   Targets: shards at least as fast as loose files, with at least 100x fewer GETs.
2. The driver's memory over shards of 1,000 samples, at each of `--memory-samples` (the same images again under
   other keys), bench-scale style: the driver's peak RSS at the largest count over that at the smallest (flat:
   <= 1.2).
3. The driver's memory against the output's history (bench-history's rule): a run over 20 small shards on local
   disk, 10 of them done, once over an output whose history is those 10 shards' rows alone, and once with
   `--history-rows` more rows besides, of other shards of 1,000 samples (the real schema, files of 4,096 rows
   over 300 succeeded runs, one sample in a thousand failed). The driver's peak RSS with the large history over
   that with the small (target <= 1.2), and the skip step's own time (`camray.io.container_done.to_read`).

The model's input is `--input-size` pixels a side (64 by default), so that on a small CPU host the reading, not
the network, is what the comparison sees. Prints a table and writes `bench-containers-results.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from camray.bench.memory import MemorySampler
from camray.bench.scale import FLAT_MEMORY_RATIO, _jpeg_pool

BUCKET = "camray-bench"
HISTORY_SHARDS, HISTORY_DONE, HISTORY_SAMPLES = 20, 10, 10
HISTORY_RUNS, HISTORY_FILE_ROWS, HISTORY_FAILED_EVERY = 300, 4096, 1000
SHARDS = 10
SAMPLES_PER_MEMORY_SHARD = 1000
TABLE_ROW_GROUP = 100  # `datasets`' row groups for image tables
COUNTS_PATH = "/_camray_bench/requests"


# --- a moto server that counts what it serves ---------------------------------------------------------------


def serve(port: int) -> None:
    """moto's S3 on 127.0.0.1:`port`, counting requests as `METHOD PREFIX` (the key's first folder; `LIST` for
    listings), which `GET /_camray_bench/requests` returns as JSON."""
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def counting(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == COUNTS_PATH:
            with lock:
                body = json.dumps(counts).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        parts = path.strip("/").split("/")
        method = environ["REQUEST_METHOD"]
        if len(parts) < 2:
            query = environ.get("QUERY_STRING", "")
            prefix = next((item[len("prefix=") :] for item in query.split("&") if item.startswith("prefix=")), "")
            name = f"LIST {prefix.split('%2F')[0].split('/')[0]}" if method == "GET" else f"{method} (bucket)"
        else:
            name = f"{method} {parts[1]}"
        with lock:
            counts[name] += 1
        return app(environ, start_response)

    make_server("127.0.0.1", port, counting, threaded=True, request_handler=MotoRequestHandler).serve_forever()


class CountingS3:
    """The counting moto server as a child process."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "camray.bench.containers", "--serve-s3", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                self.counts()
                return
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError("the counting S3 server did not start") from None
                time.sleep(0.2)

    def counts(self) -> Counter[str]:
        with urllib.request.urlopen(self.endpoint + COUNTS_PATH, timeout=10) as response:
            return Counter(json.loads(response.read()))

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=30)


# --- the inputs ---------------------------------------------------------------------------------------------


def _shard(samples: list[tuple[str, bytes, int]]) -> bytes:
    """A WebDataset shard: `KEY.jpg` and `KEY.cls` members, in key order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for key, data, label in samples:
            for suffix, payload in (("cls", str(label).encode()), ("jpg", data)):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                archive.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def _table(samples: list[tuple[str, bytes, int]]) -> bytes:
    """A Parquet image table in the `datasets` layout."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.StructArray.from_arrays(
        [pa.array([data for _, data, _ in samples], pa.binary()), pa.array([None] * len(samples), pa.string())],
        names=["bytes", "path"],
    )
    table = pa.table({"image": image, "label": pa.array([label for _, _, label in samples], pa.int64())})
    out = pa.BufferOutputStream()
    pq.write_table(table, out, row_group_size=TABLE_ROW_GROUP)
    return out.getvalue().to_pybytes()


def upload(client, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: client.put_object(Bucket=BUCKET, Key=item[0], Body=item[1]), objects.items()))


def inputs(client, images: list[bytes], memory_counts: list[int]) -> dict[str, tuple[str, dict[str, object]]]:
    """Uploads every case's input; returns case -> (input URI, config fields)."""
    labelled = [(f"{index:06d}", data, index % 1000) for index, data in enumerate(images)]
    per_shard = -(-len(labelled) // SHARDS)
    groups = [labelled[start : start + per_shard] for start in range(0, len(labelled), per_shard)]
    upload(client, {f"loose/{key[:3]}/{key}.jpg": data for key, data, _ in labelled})
    upload(client, {f"shards/shard-{index:03d}.tar": _shard(group) for index, group in enumerate(groups)})
    upload(client, {f"tables/part-{index:03d}.parquet": _table(group) for index, group in enumerate(groups)})
    cases: dict[str, tuple[str, dict[str, object]]] = {
        "loose": (f"s3://{BUCKET}/loose", {}),
        "shards": (f"s3://{BUCKET}/shards", {}),
        "tables": (f"s3://{BUCKET}/tables", {"source.format": "parquet", "source.labels_column": "label"}),
    }
    for count in memory_counts:
        shards = {}
        for index in range(-(-count // SAMPLES_PER_MEMORY_SHARD)):
            start = index * SAMPLES_PER_MEMORY_SHARD
            samples = [
                (f"{position:06d}", images[position % len(images)], position % 1000)
                for position in range(start, min(count, start + SAMPLES_PER_MEMORY_SHARD))
            ]
            shards[f"memory-{count}/shard-{index:03d}.tar"] = _shard(samples)
        upload(client, shards)
        cases[f"memory-{count}"] = (f"s3://{BUCKET}/memory-{count}", {})
    return cases


# --- a history of containers -------------------------------------------------------------------------------


def fabricate_history(output: Path, rows: int, done: list[tuple[str, str, str]], model: str, fingerprint: str) -> None:
    """`rows` sample rows of shards of 1,000 samples (one in `HISTORY_FAILED_EVERY` an error row), spread over
    `HISTORY_RUNS` succeeded runs in files of `HISTORY_FILE_ROWS`, plus the `done` (image_uri, container_uri,
    version) rows as results of the last run; and the runs' rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from camray.io.schema import ERRORS, RESULTS, RUNS

    run_ids = [f"20251201T000000Z-{index:06x}" for index in range(HISTORY_RUNS)]
    for table in ("results", "errors", "runs"):
        (output / table).mkdir(parents=True, exist_ok=True)

    def write(table: str, uris, containers, versions, run_id: str, index: int) -> None:
        schema = RESULTS if table == "results" else ERRORS
        count = len(uris)
        columns = {field.name: pa.nulls(count, field.type) for field in schema}
        columns.update(
            image_uri=uris,
            container_uri=containers,
            source_version=versions,
            run_id=pa.array([run_id] * count, pa.string()),
        )
        if table == "results":
            columns.update(model=pa.array([model] * count), config_fingerprint=pa.array([fingerprint] * count))
        else:
            columns.update(stage=pa.array(["decode"] * count), error_type=pa.array(["UnidentifiedImageError"] * count))
        pq.write_table(pa.table(columns, schema=schema), output / table / f"{run_id}-a01-{index:05d}.parquet")

    files = -(-rows // HISTORY_FILE_ROWS)
    for index in range(files):
        numbers = pa.array(np.arange(index * HISTORY_FILE_ROWS, min(rows, (index + 1) * HISTORY_FILE_ROWS)))
        shard = pc.cast(pc.divide(numbers, 1000), pa.string())
        containers = pc.binary_join_element_wise("s3://bench-history/shards/shard-", shard, ".tar", "")
        uris = pc.binary_join_element_wise(containers, pc.cast(numbers, pa.string()), "#")
        versions = pc.binary_join_element_wise(shard, "-1764547200000000000", "")
        failed = pc.equal(pc.bit_wise_and(numbers, 1023), 7)  # about one sample in a thousand
        run_id = run_ids[index * len(run_ids) // files]
        for table, keep in (("results", pc.invert(failed)), ("errors", failed)):
            picked = [column.filter(keep) for column in (uris, containers, versions)]
            if len(picked[0]):
                write(table, *picked, run_id, index)
    if done:
        image_uris, containers, versions = (pa.array(column) for column in zip(*done, strict=True))
        write("results", image_uris, containers, versions, run_ids[-1], files)
    started = datetime(2025, 12, 1, tzinfo=UTC)
    runs = {field.name: pa.nulls(len(run_ids), field.type) for field in RUNS}
    runs.update(
        run_id=pa.array(run_ids),
        status=pa.array(["succeeded"] * len(run_ids)),
        started_at=pa.array([started] * len(run_ids), pa.timestamp("us", tz="UTC")),
        model=pa.array([model] * len(run_ids)),
        config_fingerprint=pa.array([fingerprint] * len(run_ids)),
    )
    pq.write_table(pa.table(runs, schema=RUNS), output / "runs" / "history.parquet")


def history_case(root: Path, images: list[bytes], history_rows: int, input_size: int) -> dict[str, dict[str, float]]:
    """The run over 20 shards, 10 done, against a small and a large history (see the module docstring)."""
    from camray.config import load_config
    from camray.io.container_done import ContainerHistory, Skipped, to_read
    from camray.io.containers import WEBDATASET, iter_containers
    from camray.io.sources import S3Settings
    from camray.runner import run_job

    shards = root / "history-shards"
    shards.mkdir()
    for index in range(HISTORY_SHARDS):
        samples = [(f"{key:03d}", images[index * HISTORY_SAMPLES + key], key) for key in range(HISTORY_SAMPLES)]
        (shards / f"shard-{index:03d}.tar").write_bytes(_shard(samples))
    listed = [
        row for chunk in iter_containers(str(shards), WEBDATASET, True, S3Settings()) for row in chunk.to_pylist()
    ]
    done = [
        (f"{row['uri']}#{key:03d}", row["uri"], row["version"])
        for row in listed[:HISTORY_DONE]
        for key in range(HISTORY_SAMPLES)
    ]
    measured: dict[str, dict[str, float]] = {}
    for name, rows in (("small", 0), ("large", history_rows)):
        output = root / f"history-{name}"
        config = load_config(
            overrides={"source.uri": str(shards), "sink.uri": str(output), "model.input_size": input_size}
        )
        clock = time.perf_counter()
        fabricate_history(output, rows, done, config.model.name, config.fingerprint())
        fabricated = time.perf_counter() - clock
        with MemorySampler(interval=0.2) as sampler:
            clock = time.perf_counter()
            summary = run_job(config)
            seconds = time.perf_counter() - clock
        expected = (HISTORY_SHARDS - HISTORY_DONE) * HISTORY_SAMPLES
        if (summary.status, summary.skipped, summary.results + summary.errors) != ("succeeded", HISTORY_DONE, expected):
            raise RuntimeError(f"history {name}: {summary}")
        clock = time.perf_counter()
        history = ContainerHistory(str(output), config.model.name, config.fingerprint(), S3Settings())
        chunks = iter_containers(str(shards), WEBDATASET, True, S3Settings())
        left = sum(table.num_rows for table in to_read(chunks, history, None, None, Skipped()))
        skip_seconds = time.perf_counter() - clock
        measured[name] = {
            "history_rows": rows + len(done),
            "fabricate_seconds": fabricated,
            "seconds": seconds,
            "peak_driver_rss_mib": sampler.peak_driver / 2**20,
            "skip_step_seconds": skip_seconds,
            "left_to_read": left,
        }
        print(
            f"history {name:<5} {rows + len(done):>11,d} rows: run {seconds:.1f} s, driver "
            f"{measured[name]['peak_driver_rss_mib']:.0f} MiB; the skip step alone {skip_seconds:.1f} s",
            flush=True,
        )
        shutil.rmtree(output, ignore_errors=True)
    return measured


# --- the runs -----------------------------------------------------------------------------------------------


def run_case(name: str, source: str, fields: dict[str, object], server: CountingS3, root: Path, input_size: int):
    from camray.config import load_config
    from camray.runner import run_job

    config = load_config(
        overrides={
            "source.uri": source,
            "sink.uri": str(root / f"out-{name}"),
            "sink.incremental": False,
            "model.input_size": input_size,
            **fields,
        }
    )
    before = server.counts()
    with MemorySampler(interval=0.2) as sampler:
        clock = time.perf_counter()
        summary = run_job(config)
        seconds = time.perf_counter() - clock
    requests = server.counts() - before
    shutil.rmtree(root / f"out-{name}", ignore_errors=True)
    if summary.status != "succeeded" or summary.errors:
        raise RuntimeError(f"{name}: {summary}")
    prefix = source.removeprefix(f"s3://{BUCKET}/")
    return {
        "samples": summary.results,
        "seconds": seconds,
        "samples_per_second": summary.results / seconds,
        "gets": requests[f"GET {prefix}"],
        "heads": requests[f"HEAD {prefix}"],
        "lists": requests[f"LIST {prefix}"],
        "peak_driver_rss_mib": sampler.peak_driver / 2**20,
    }


def _line(name: str, numbers: dict[str, float]) -> str:
    return (
        f"{name:<14} {numbers['samples']:>7,d} samples {numbers['seconds']:>7.1f} s "
        f"{numbers['samples_per_second']:>7.1f}/s "
        f"GET {numbers['gets']:>6,d} HEAD {numbers['heads']:>4,d} LIST {numbers['lists']:>3,d} "
        f"driver {numbers['peak_driver_rss_mib']:>5.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--memory-samples", default="5000,50000", help="comma-separated; empty skips the memory runs")
    parser.add_argument("--input-size", type=int, default=64, help="the model's input side, pixels")
    parser.add_argument("--history-rows", type=int, default=10_000_000, help="0 skips the history runs")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each of loose, shards, tables")
    parser.add_argument("--output", default="bench-containers-results.json")
    parser.add_argument("--serve-s3", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_s3 is not None:
        serve(args.serve_s3)
        return 0
    memory_counts = sorted(int(n) for n in args.memory_samples.split(",") if n.strip())

    server = CountingS3()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=server.endpoint,
    )
    import boto3
    import ray
    import torch

    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        "images": args.images,
        "input_size": args.input_size,
    }
    root = Path(tempfile.mkdtemp(prefix="camray-bench-containers-"))
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        clock = time.perf_counter()
        images = [path.read_bytes() for path in _jpeg_pool(args.images)]
        cases = inputs(client, images, memory_counts)
        report["upload_seconds"] = time.perf_counter() - clock
        print(f"inputs made and uploaded in {report['upload_seconds']:.0f} s", flush=True)
        # After AWS_*, which the workers inherit; a cluster of its own, not one another process started.
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        results: dict[str, dict[str, float]] = {}
        compared = ["loose", "shards", "tables"]
        repeats: dict[str, list[dict[str, float]]] = {name: [] for name in compared}
        for repeat in range(args.repeats):
            for name in compared if repeat % 2 == 0 else reversed(compared):
                source, fields = cases[name]
                repeats[name].append(run_case(name, source, fields, server, root, args.input_size))
                print(_line(name, repeats[name][-1]), flush=True)
        for name in compared:
            results[name] = {**min(repeats[name], key=lambda numbers: numbers["seconds"]), "all": repeats[name]}
        for name in [name for name in cases if name not in compared]:
            source, fields = cases[name]
            results[name] = run_case(name, source, fields, server, root, args.input_size)
            print(_line(name, results[name]), flush=True)
            report["cases"] = results
            Path(args.output).write_text(json.dumps(report, indent=2))
        if args.history_rows:
            report["history"] = history_case(root, images, args.history_rows, args.input_size)
    finally:
        ray.shutdown()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    loose, shards = results["loose"], results["shards"]
    report["shards_over_loose_speed"] = shards["samples_per_second"] / loose["samples_per_second"]
    report["loose_over_shards_gets"] = loose["gets"] / max(1, shards["gets"])
    report["loose_over_tables_gets"] = loose["gets"] / max(1, results["tables"]["gets"])
    print(
        f"\nshards / loose files, samples per second: {report['shards_over_loose_speed']:.2f} (target >= 1); "
        f"GETs, loose / shards: {report['loose_over_shards_gets']:.0f}x (target >= 100x); "
        f"loose / tables: {report['loose_over_tables_gets']:.0f}x"
    )
    if len(memory_counts) > 1:
        small, large = (results[f"memory-{count}"] for count in (memory_counts[0], memory_counts[-1]))
        ratio = large["peak_driver_rss_mib"] / small["peak_driver_rss_mib"]
        report["memory_ratio_driver"] = ratio
        print(
            f"driver peak at {memory_counts[-1]:,} samples over {memory_counts[0]:,}: {ratio:.2f} "
            f"(flat: <= {FLAT_MEMORY_RATIO})"
        )
    if "history" in report:
        history = report["history"]
        ratio = history["large"]["peak_driver_rss_mib"] / history["small"]["peak_driver_rss_mib"]
        report["history_ratio_driver"] = ratio
        print(f"driver peak with {args.history_rows:,} history rows over none: {ratio:.2f} (target <= 1.2)")
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
