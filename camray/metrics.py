"""Monitoring: the run's outcome pushed to a Prometheus Pushgateway, and live counters through Ray's metrics.

The outcome (docs/monitoring.md) goes to one Pushgateway group per job and output, with `pushadd`: each run
replaces the metrics it pushes and leaves the others. Only a succeeded run pushes the time of the last success,
so a failed or interrupted run replaces the status, duration and counts but never that time; every other
family is pushed whole by every run (each status and stage, zero where none), so no value of an earlier run
survives beside the new ones.

The live metrics are recorded by the predictor actors with `ray.util.metrics`; Ray's metrics agent exports
them on each node's metrics port beside Ray Data's own, prefixed `ray_`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

if TYPE_CHECKING:
    from camray.config import MetricsConfig
    from camray.io.sink import WrittenCounts

logger = logging.getLogger(__name__)

PUSHGATEWAY_ENV = "CAMRAY_PUSHGATEWAY_URL"
STATUSES = ("succeeded", "failed", "interrupted", "incomplete")
# The stages an error row names (`errors.stage`); each is pushed, zero where the run had none.
STAGES = ("read", "decode", "predict")
IMAGE_OUTCOMES = ("results", "errors", "skipped")
# Seconds of one predictor batch: 16 images on a CPU core take seconds, 256 on a GPU well under one.
BATCH_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)


class SummaryFields(Protocol):
    """What the outcome reads of `camray.runner.RunSummary` (named here: the runner imports this module)."""

    status: str
    output_uri: str
    seconds: float
    results: int
    errors: int
    skipped: int
    errors_by_stage: Mapping[str, int]


@dataclass(frozen=True)
class RunOutcome:
    """What one run pushes: its summary's numbers and the sink's S3 retries, as plain values."""

    status: str
    output_uri: str
    seconds: float
    finished_at: float
    results: int
    errors: int
    skipped: int
    errors_by_stage: Mapping[str, int] = field(default_factory=dict)
    read_retries: int = 0
    write_retries: int = 0

    @classmethod
    def of(cls, summary: SummaryFields, counts: WrittenCounts, finished_at: float | None = None) -> RunOutcome:
        return cls(
            status=summary.status,
            output_uri=summary.output_uri,
            seconds=summary.seconds,
            finished_at=time.time() if finished_at is None else finished_at,
            results=summary.results,
            errors=summary.errors,
            skipped=summary.skipped,
            errors_by_stage=dict(summary.errors_by_stage),
            read_retries=counts.read_retries,
            write_retries=counts.write_retries,
        )


def outcome_registry(outcome: RunOutcome) -> CollectorRegistry:
    """The pushed metrics of one run (names and labels: docs/monitoring.md)."""
    registry = CollectorRegistry()
    if outcome.status == "succeeded":
        Gauge(
            "camray_run_last_success_timestamp_seconds",
            "Unix time at which the last succeeded run ended; failed and interrupted runs leave it as it was.",
            registry=registry,
        ).set(outcome.finished_at)
    Gauge(
        "camray_run_finished_timestamp_seconds",
        "Unix time at which the last run ended, whatever its status.",
        registry=registry,
    ).set(outcome.finished_at)
    Gauge("camray_run_duration_seconds", "Wall time of the last run.", registry=registry).set(outcome.seconds)
    status = Gauge(
        "camray_run_status", "1 for the status of the last run, 0 for the others.", ["status"], registry=registry
    )
    for name in sorted({*STATUSES, outcome.status}):
        status.labels(name).set(1 if name == outcome.status else 0)
    images = Gauge(
        "camray_run_images",
        "Images of the last run by outcome: results and errors written (earlier attempts of a resumed run "
        "included), skipped as already done.",
        ["outcome"],
        registry=registry,
    )
    for name, value in zip(IMAGE_OUTCOMES, (outcome.results, outcome.errors, outcome.skipped), strict=True):
        images.labels(name).set(value)
    errors = Gauge("camray_run_errors", "Error rows of the last run by stage.", ["stage"], registry=registry)
    for stage in sorted({*STAGES, *outcome.errors_by_stage}):
        errors.labels(stage).set(outcome.errors_by_stage.get(stage, 0))
    retries = Gauge(
        "camray_run_s3_retries",
        "S3 requests of the last run retried: reads of the inputs, writes of the output.",
        ["direction"],
        registry=registry,
    )
    retries.labels("read").set(outcome.read_retries)
    retries.labels("write").set(outcome.write_retries)
    return registry


def pushgateway_url(config: MetricsConfig) -> str | None:
    """`metrics.pushgateway_url`, else CAMRAY_PUSHGATEWAY_URL, else None (nothing is pushed)."""
    return config.pushgateway_url or os.environ.get(PUSHGATEWAY_ENV) or None


def push_outcome(config: MetricsConfig, summary: SummaryFields, counts: WrittenCounts) -> bool:
    """Pushes the run's outcome where configured; returns whether it was pushed. Never raises: the run's own
    result stands whatever the Pushgateway does, and a failed push costs one warning line."""
    url = pushgateway_url(config)
    if url is None:
        return False
    outcome = RunOutcome.of(summary, counts)
    try:
        pushadd_to_gateway(
            url,
            job=config.job_name,
            grouping_key={"output": outcome.output_uri},
            registry=outcome_registry(outcome),
            timeout=config.push_timeout_seconds,
        )
    except Exception as exc:  # refused, unresolvable, timed out, an HTTP error: all the same to the run
        logger.warning("could not push the run's metrics to the Pushgateway %s: %s", _without_credentials(url), exc)
        return False
    logger.info("pushed the run's %s outcome to the Pushgateway %s", outcome.status, _without_credentials(url))
    return True


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}"


# Live metrics (Ray) ----------------------------------------------------------------------------------------------


class _LiveMetrics:
    """The actor's metrics objects, made once per worker process (Ray registers each name with its agent)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.images = metrics.Counter(
            "camray_images_processed",
            "Images the predictor actors have turned into result or error rows, by outcome.",
            tag_keys=("outcome",),
        )
        self.errors = metrics.Counter(
            "camray_image_errors", "Error rows by stage (read, decode, predict).", tag_keys=("stage",)
        )
        self.batch_seconds = metrics.Histogram(
            "camray_predictor_batch_seconds",
            "Wall time of one predictor batch, decoding on the device included.",
            boundaries=list(BATCH_SECONDS_BUCKETS),
        )


@functools.cache
def _live() -> _LiveMetrics:
    return _LiveMetrics()


def record_predictor_batch(rows: pa.Table, seconds: float) -> None:
    """Counts a predictor batch's rows (`camray.io.schema.ROWS`) and observes its latency, in a Ray worker;
    elsewhere (the predictor used without Ray) there is no agent to report to and nothing is recorded."""
    import ray

    if not ray.is_initialized() or not rows.num_rows:
        return
    live = _live()
    failed = pc.is_valid(rows.column("error_type"))
    errors = pc.sum(failed).as_py() or 0
    if rows.num_rows > errors:
        live.images.inc(rows.num_rows - errors, tags={"outcome": "results"})
    if errors:
        live.images.inc(errors, tags={"outcome": "errors"})
        stages = pc.value_counts(rows.filter(failed).column("stage").fill_null("unknown"))
        for item in stages.to_pylist():
            live.errors.inc(item["counts"], tags={"stage": item["values"]})
    live.batch_seconds.observe(seconds)


def timed_batch(call: Callable[[Any, dict], pa.Table]) -> Callable[[Any, dict], pa.Table]:
    """Decorates the predictor's `__call__`: each batch's rows and wall time go to the live metrics."""

    @functools.wraps(call)
    def timed(self: Any, batch: dict) -> pa.Table:
        start = time.perf_counter()
        rows = call(self, batch)
        record_predictor_batch(rows, time.perf_counter() - start)
        return rows

    return timed
