"""The run's outcome on a real Pushgateway: what each status pushes, what it leaves, and a gateway that is down."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from monitoring_parts import pushed_samples, pushgateway
from ray_helpers import free_port

from camray.cli import build_parser, overrides_from_args
from camray.config import ConfigError, MetricsConfig, load_config
from camray.io.sink import WrittenCounts
from camray.metrics import PUSHGATEWAY_ENV, push_outcome, pushgateway_url
from camray.runner import RunSummary

OUTPUT = "s3://bucket/cam/nightly"  # slashes: the grouping key travels base64-encoded in the URL


def summary(status: str, seconds: float, results: int, errors: dict[str, int], skipped: int = 0) -> RunSummary:
    return RunSummary(
        run_id=f"run-{status}",
        status=status,
        listed=results + sum(errors.values()) + skipped,
        skipped=skipped,
        results=results,
        errors=sum(errors.values()),
        seconds=seconds,
        output_uri=OUTPUT,
        result_files=(),
        errors_by_stage=errors,
    )


def counts(read_retries: int, write_retries: int) -> WrittenCounts:
    return WrittenCounts(read_retries=read_retries, write_retries=write_retries)


def one(samples: dict, name: str, **labels: str) -> float:
    key = tuple(sorted({"job": "camray", "output": OUTPUT, **labels}.items()))
    return samples[name][key]


@pytest.fixture
def gateway(tmp_path):
    with pushgateway(tmp_path) as url:
        yield url


def test_a_success_pushes_everything_and_a_later_failure_leaves_its_time(gateway):
    config = MetricsConfig(pushgateway_url=gateway)
    assert push_outcome(config, summary("succeeded", 120.0, 40, {"decode": 2, "predict": 1}, 7), counts(3, 1))
    first = pushed_samples(gateway)
    success_time = one(first, "camray_run_last_success_timestamp_seconds")
    assert success_time == one(first, "camray_run_finished_timestamp_seconds") > 0
    assert one(first, "camray_run_duration_seconds") == 120.0
    assert one(first, "camray_run_status", status="succeeded") == 1.0
    assert {one(first, "camray_run_status", status=s) for s in ("failed", "interrupted", "incomplete")} == {0.0}
    images = {o: one(first, "camray_run_images", outcome=o) for o in ("results", "errors", "skipped")}
    assert images == {"results": 40.0, "errors": 3.0, "skipped": 7.0}
    stages = {s: one(first, "camray_run_errors", stage=s) for s in ("read", "decode", "predict")}
    assert stages == {"read": 0.0, "decode": 2.0, "predict": 1.0}
    assert one(first, "camray_run_s3_retries", direction="read") == 3.0
    assert one(first, "camray_run_s3_retries", direction="write") == 1.0

    assert push_outcome(config, summary("failed", 30.0, 5, {"read": 4}), counts(250, 0))
    second = pushed_samples(gateway)
    assert one(second, "camray_run_last_success_timestamp_seconds") == success_time
    assert one(second, "camray_run_finished_timestamp_seconds") > success_time
    assert one(second, "camray_run_status", status="failed") == 1.0
    assert one(second, "camray_run_status", status="succeeded") == 0.0
    assert one(second, "camray_run_duration_seconds") == 30.0
    # Every family is replaced whole: the first run's decode and predict errors do not linger beside the read ones.
    stages = {s: one(second, "camray_run_errors", stage=s) for s in ("read", "decode", "predict")}
    assert stages == {"read": 4.0, "decode": 0.0, "predict": 0.0}
    assert one(second, "camray_run_s3_retries", direction="read") == 250.0

    assert push_outcome(config, summary("interrupted", 10.0, 0, {}), counts(0, 0))
    third = pushed_samples(gateway)
    assert one(third, "camray_run_last_success_timestamp_seconds") == success_time
    assert one(third, "camray_run_status", status="interrupted") == 1.0


def test_each_job_and_output_is_its_own_group(gateway):
    assert push_outcome(MetricsConfig(pushgateway_url=gateway), summary("succeeded", 1.0, 1, {}), counts(0, 0))
    other = MetricsConfig(pushgateway_url=gateway, job_name="camray-staging")
    assert push_outcome(other, summary("failed", 2.0, 0, {}), counts(0, 0))
    statuses = pushed_samples(gateway)["camray_run_status"]
    assert statuses[(("job", "camray"), ("output", OUTPUT), ("status", "succeeded"))] == 1.0
    assert statuses[(("job", "camray-staging"), ("output", OUTPUT), ("status", "failed"))] == 1.0
    successes = pushed_samples(gateway)["camray_run_last_success_timestamp_seconds"]
    assert [dict(key)["job"] for key in successes] == ["camray"]


@pytest.mark.parametrize("where", ["nothing listens", "wrong path"])
def test_a_pushgateway_that_fails_costs_one_warning(gateway, caplog, where):
    url = f"http://127.0.0.1:{free_port()}" if where == "nothing listens" else f"{gateway}/not-a-pushgateway"
    with caplog.at_level(logging.INFO, logger="camray.metrics"):
        pushed = push_outcome(MetricsConfig(pushgateway_url=url), summary("succeeded", 1.0, 1, {}), counts(0, 0))
    assert pushed is False
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and url in warnings[0].getMessage(), caplog.text
    assert "\n" not in warnings[0].getMessage()


def test_the_url_comes_from_the_field_else_the_environment_else_nothing(gateway, monkeypatch):
    monkeypatch.delenv(PUSHGATEWAY_ENV, raising=False)
    assert pushgateway_url(MetricsConfig()) is None
    assert push_outcome(MetricsConfig(), summary("succeeded", 1.0, 1, {}), counts(0, 0)) is False
    assert "camray_run_status" not in pushed_samples(gateway)

    monkeypatch.setenv(PUSHGATEWAY_ENV, gateway)
    assert push_outcome(MetricsConfig(), summary("succeeded", 1.0, 1, {}), counts(0, 0)) is True
    assert "camray_run_status" in pushed_samples(gateway)
    assert pushgateway_url(MetricsConfig(pushgateway_url="http://elsewhere:9091")) == "http://elsewhere:9091"


def test_the_command_line_sets_the_metrics_section():
    args = build_parser().parse_args(
        ["--metrics.pushgateway_url", "http://pushgateway:9091", "--metrics.job_name", "camray-nightly"]
    )
    config = load_config(overrides=overrides_from_args(args))
    assert (config.metrics.pushgateway_url, config.metrics.job_name) == ("http://pushgateway:9091", "camray-nightly")
    # Monitoring settings change no result: the skip-done fingerprint stays that of the defaults.
    assert config.fingerprint() == load_config().fingerprint()


def test_a_url_with_credentials_is_refused_without_echoing_them():
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"metrics.pushgateway_url": "http://user:hunter2@pushgateway:9091"})
    assert "metrics.pushgateway_url" in str(caught.value) and "hunter2" not in str(caught.value)


def test_every_stage_the_run_counts_is_pushed_even_one_camray_does_not_name_yet(gateway):
    config = MetricsConfig(pushgateway_url=gateway)
    errors = Counter({"decode": 1, "write": 2})
    assert push_outcome(config, summary("incomplete", 1.0, 0, dict(errors)), counts(0, 0))
    samples = pushed_samples(gateway)
    assert one(samples, "camray_run_errors", stage="write") == 2.0
    assert one(samples, "camray_run_status", status="incomplete") == 1.0
