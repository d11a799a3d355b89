"""A real camray run on the shared Ray head pushes to a real Pushgateway; a real Prometheus scrapes the gateway
and Ray's metrics agent, evaluates infra/monitoring's rules, and answers the dashboard's queries."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

import pytest
from monitoring_parts import (
    MONITORING,
    exposed_names,
    http_get,
    instant,
    prometheus,
    prometheus_api,
    pushed_samples,
    pushgateway,
    wait_for,
)
from ray_helpers import free_port

from camray.config import load_config
from camray.runner import run_job

pytestmark = pytest.mark.integration

JOB = "camray-test"
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png")
LIVE = (
    "ray_camray_images_processed_total",
    "ray_camray_image_errors_total",
    "ray_camray_predictor_batch_seconds_bucket",
)
# Ray's metrics agent reports every few seconds; a scrape every second of Prometheus follows.
SCRAPE_WAIT_S = 90.0


@pytest.fixture(scope="module")
def monitoring(ray_head, tmp_path_factory):
    """A Pushgateway, and a Prometheus that scrapes it and the Ray head's metrics export port."""
    node = ray_head.head_node
    ray_target = f"{node.node_ip_address}:{node.metrics_export_port}"
    folder = tmp_path_factory.mktemp("monitoring")
    with pushgateway(folder) as gateway:
        targets = {"pushgateway": gateway.removeprefix("http://"), "ray": ray_target}
        with prometheus(folder, targets, [MONITORING / "rules.yml"]) as prom:
            yield {"gateway": gateway, "prometheus": prom, "ray": f"http://{ray_target}"}


class NameWatcher:
    """Names on Ray's metrics endpoint, read every second while a run goes and after: Ray Data's gauges live
    only as long as their dataset."""

    def __init__(self, url: str) -> None:
        self.url, self.names = url, set[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.names |= exposed_names(http_get(f"{self.url}/metrics"))
            except OSError:
                continue

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join()
        return self.names


def images_folder(tmp_path: Path, photos: dict[str, bytes]) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for name in PHOTOS:
        (folder / name).write_bytes(photos[name])
    (folder / "notes.jpg").write_bytes(b"shopping list: milk, eggs\n")  # a decode error
    return folder


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def test_a_run_pushes_its_counts_and_prometheus_answers_them(monitoring, photos, tmp_path, ray_head):
    prom, output = monitoring["prometheus"], str(tmp_path / "out")
    overrides = {
        "source.uri": str(images_folder(tmp_path, photos)),
        "sink.uri": output,
        "metrics.pushgateway_url": monitoring["gateway"],
        "metrics.job_name": JOB,
        "runtime.batch_size": 2,
    }
    watcher = NameWatcher(monitoring["ray"])
    summary = run_job(load_config(overrides=overrides))
    assert (summary.status, summary.results, summary.errors) == ("succeeded", len(PHOTOS), 1)

    selector = f'job="{JOB}", output="{output}"'
    images = wait_for(
        lambda: (found := instant(prom, f"camray_run_images{{{selector}}}")) and len(found) == 3 and found,
        SCRAPE_WAIT_S,
        "the pushed images in Prometheus",
    )
    by_outcome = {dict(key)["outcome"]: value for key, value in images.items()}
    assert by_outcome == {"results": len(PHOTOS), "errors": 1, "skipped": 0}
    stages = {dict(key)["stage"]: value for key, value in instant(prom, f"camray_run_errors{{{selector}}}").items()}
    assert stages == {"read": 0, "decode": 1, "predict": 0}
    assert instant(prom, f'camray_run_status{{{selector}, status="succeeded"}}') == {
        labels(job=JOB, output=output, status="succeeded"): 1.0
    }
    (duration,) = instant(prom, f"camray_run_duration_seconds{{{selector}}}").values()
    assert duration == pytest.approx(summary.seconds)
    (success,) = instant(prom, f"camray_run_last_success_timestamp_seconds{{{selector}}}").values()
    assert time.time() - 300 < success <= time.time()
    # One error in five images: infra/monitoring's rule, evaluated by this Prometheus, fires.
    wait_for(
        lambda: instant(prom, f'ALERTS{{alertname="CamrayErrorShareHigh", alertstate="firing", {selector}}}'),
        SCRAPE_WAIT_S,
        "CamrayErrorShareHigh to fire",
    )

    # A second run into the same output fails before any work (its weights file is missing): it pushes its
    # failed status and leaves the last success as it was.
    with pytest.raises(Exception):  # noqa: B017 - the loader's own error type
        run_job(load_config(overrides={**overrides, "model.weights": str(tmp_path / "missing.pth")}))
    failed = wait_for(
        lambda: instant(prom, f'camray_run_status{{{selector}, status="failed"}} == 1'),
        SCRAPE_WAIT_S,
        "the failed status in Prometheus",
    )
    assert list(failed.values()) == [1.0]
    assert list(instant(prom, f"camray_run_last_success_timestamp_seconds{{{selector}}}").values()) == [success]
    (finished,) = instant(prom, f"camray_run_finished_timestamp_seconds{{{selector}}}").values()
    assert finished > success

    # Ray's endpoint: camray's live metrics, recorded in the predictor actors, beside Ray Data's.
    wait_for(lambda: set(LIVE) <= watcher.names, SCRAPE_WAIT_S, f"{LIVE} on Ray's metrics endpoint")
    ray_names = watcher.stop()
    processed = wait_for(
        lambda: instant(prom, "sum by (outcome) (ray_camray_images_processed_total)"), SCRAPE_WAIT_S, "live counts"
    )
    by_outcome = {dict(key)["outcome"]: value for key, value in processed.items()}
    # The shared head's other runs count too: at least this run's.
    assert by_outcome["results"] >= len(PHOTOS) and by_outcome["errors"] >= 1
    assert instant(prom, 'sum(ray_camray_image_errors_total{stage="decode"})')[()] >= 1

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    # The names the run exposed: the Pushgateway's, and Ray's endpoint's (watched, and as Prometheus kept them).
    exposed = set(pushed_samples(monitoring["gateway"])) | ray_names
    exposed |= set(prometheus_api(prom, "label/__name__/values"))
    used = {name for expr in exprs for name in re.findall(r"\b((?:ray|camray)_[a-z0-9_]+)\b", expr)}
    assert used <= exposed, f"the dashboard reads metrics no run exposes: {sorted(used - exposed)}"
    for expr in exprs:  # each parses and runs as Grafana sends it, `output` set to All
        query = expr.replace("$job", JOB).replace("$output", ".+").replace("$__rate_interval", "1m")
        result = prometheus_api(prom, "query", query=query)
        if "camray_run_" in expr:
            assert result["result"], f"no data for {expr}"

    health = [rule["health"] for group in prometheus_api(prom, "rules")["groups"] for rule in group["rules"]]
    assert health == ["ok"] * 4


def test_a_pushgateway_that_is_down_costs_one_warning_and_the_run_succeeds(ray_head, photos, tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "chelsea.png").write_bytes(photos["chelsea.png"])
    url = f"http://127.0.0.1:{free_port()}"
    config = load_config(
        overrides={"source.uri": str(folder), "sink.uri": str(tmp_path / "out"), "metrics.pushgateway_url": url}
    )
    with caplog.at_level(logging.WARNING, logger="camray.metrics"):
        summary = run_job(config)
    assert (summary.status, summary.results) == ("succeeded", 1)
    warnings = [r for r in caplog.records if r.name == "camray.metrics" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and url in warnings[0].getMessage()
