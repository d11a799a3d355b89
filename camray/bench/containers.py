"""Containers benchmark: `make bench-containers` or `python -m camray.bench.containers [--images 10000]
[--memory-samples 5000,50000] [--input-size 64]`.

On the moto S3 server (a process of its own, which counts every request it serves by method and key prefix):
1. The same `--images` small JPEGs (bench-scale's 64-128 px crops) as loose objects, as 10 WebDataset shards
   (`KEY.jpg` and `KEY.cls` members) and as 10 Parquet files in the `datasets` layout (`image` {bytes, path},
   `label`, row groups of 100 as `datasets` writes image tables): the whole job over each, one after the other
   on one local Ray cluster, output on local disk. Wall time, the input's GET, HEAD and LIST requests, and the
   driver's peak RSS of each. Targets: shards at least as fast as loose files, with at least 100x fewer GETs.
2. The driver's memory over shards of 1,000 samples, at each of `--memory-samples` (the same images again under
   other keys), bench-scale style: the driver's peak RSS at the largest count over that at the smallest (flat:
   <= 1.2).

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
        for name, (source, fields) in cases.items():
            results[name] = run_case(name, source, fields, server, root, args.input_size)
            print(_line(name, results[name]), flush=True)
            report["cases"] = results
            Path(args.output).write_text(json.dumps(report, indent=2))
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
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
