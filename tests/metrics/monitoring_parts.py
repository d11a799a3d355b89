"""Real monitoring parts for the tests: Debian's Pushgateway and Prometheus on free loopback ports, and readers of
what they and Ray's metrics agent expose."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from ray_helpers import free_port

from camray.bench.moto_process import stop_child

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "infra" / "monitoring"
PUSHGATEWAY = "prometheus-pushgateway"
PROMETHEUS = "prometheus"
PROMTOOL = "promtool"
INSTALL_HINT = "apt-get install prometheus prometheus-pushgateway (as root: `make system-packages`)"

T = TypeVar("T")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is missing: {INSTALL_HINT}")
    return path


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.5) -> T:
    """The first truthy value `probe` returns; fails naming `what` when none comes within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError, KeyError) as exc:  # not up yet, or not answering yet
            last, value = exc, None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last})")


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode()


@contextlib.contextmanager
def serving(command: list[str], base_url: str, log: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """Runs `command` until the block ends; yields `base_url` once its `/-/ready` answers."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited with {process.returncode}: {log.read_text()[-2000:]}")
            return bool(http_get(f"{base_url}/-/ready", timeout_s=2.0))

        wait_for(ready, timeout_s, f"{command[0]} at {base_url}")
        yield base_url
    finally:
        stop_child(process, timeout_s=20)


@contextlib.contextmanager
def pushgateway(folder: Path) -> Iterator[str]:
    port = free_port()
    # Debian's build persists to /var/lib/prometheus by default: each test's gateway starts empty instead.
    command = [
        binary(PUSHGATEWAY),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={folder / 'pushgateway.data'}",
    ]
    with serving(command, f"http://127.0.0.1:{port}", folder / "pushgateway.log") as url:
        yield url


@contextlib.contextmanager
def prometheus(folder: Path, scrape: dict[str, str], rule_files: list[Path]) -> Iterator[str]:
    """Prometheus scraping each `job: host:port` every second, the Pushgateway's way (`honor_labels`: the pushed
    `job` label stays), evaluating `rule_files` every second."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "honor_labels": True, "static_configs": [{"targets": [target]}]}
            for job, target in scrape.items()
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    command = [
        binary(PROMETHEUS),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with serving(command, f"http://127.0.0.1:{port}", folder / "prometheus.log") as url:
        yield url


def prometheus_api(base_url: str, path: str, **params: str) -> Any:
    """`data` of a Prometheus HTTP API answer; raises on an error answer (a query that does not parse)."""
    query = urllib.parse.urlencode(params)
    try:
        answer = json.loads(http_get(f"{base_url}/api/v1/{path}?{query}"))
    except urllib.error.HTTPError as exc:
        raise ValueError(f"{path} {params}: {exc.read().decode()}") from exc
    if answer["status"] != "success":
        raise ValueError(f"{path} {params}: {answer}")
    return answer["data"]


def instant(base_url: str, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's samples, keyed by their labels (`__name__` left out)."""
    data = prometheus_api(base_url, "query", query=expr)
    assert data["resultType"] == "vector", data
    return {
        tuple(sorted((k, v) for k, v in sample["metric"].items() if k != "__name__")): float(sample["value"][1])
        for sample in data["result"]
    }


def exposed_names(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition (`_bucket`, `_total` and the like as exposed)."""
    return {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if line and not line[0] == "#"}


def pushed_samples(base_url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """What a Pushgateway serves to Prometheus, by sample name, then labels (`instance` left out)."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(http_get(f"{base_url}/metrics")):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "instance"))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples
