"""The predictor's allocator settings: freed activations are reused, not faulted in again on every batch.

Each check allocates, touches and frees a 64 MiB buffer (the size class of a CPU forward pass's activations)
in a fresh process and counts the minor page faults of the later rounds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from camray.host_memory import ALLOCATOR_ENV

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")

ROUNDS = 8


def faults_per_round(rounds: int = ROUNDS, mebibytes: int = 64) -> float:
    """Minor page faults per allocate-touch-free round of a `mebibytes` buffer, after one warm-up round."""
    import resource

    import numpy as np

    def one_round() -> None:
        buffer = np.empty(mebibytes << 18, dtype=np.float32)
        buffer.fill(1.0)  # touch every page
        del buffer

    one_round()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        one_round()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / rounds


def _in_fresh_process(prelude: str = "", env: dict[str, str] | None = None) -> float:
    code = f"{prelude}\nfrom tests.test_host_memory import faults_per_round\nprint(faults_per_round())"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**environment, **(env or {})},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_faults() -> float:
    return _in_fresh_process()


def test_by_default_every_round_faults_its_buffer_in_again(default_faults):
    # The baseline the settings exist for; if a C library ever stops doing this, they are moot.
    assert default_faults >= 16


def test_the_environment_keeps_freed_buffers_for_reuse(default_faults):
    assert _in_fresh_process(env=ALLOCATOR_ENV) < 0.1 * default_faults


def test_mallopt_does_the_same_in_a_running_process(default_faults):
    prelude = "from camray.host_memory import retain_freed_memory\nassert retain_freed_memory()"
    assert _in_fresh_process(prelude) < 0.1 * default_faults


@pytest.mark.integration
def test_ray_starts_workers_with_the_environment(ray_cluster):
    """glibc reads the settings once, at process start: Ray must start the worker with them, not set them in
    `os.environ` of a running one. The predictor actors get them this way (`camray.runner`)."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests folder

    def measure() -> str:
        return json.dumps({"faults": faults_per_round(), "arena_max": os.environ.get("MALLOC_ARENA_MAX")})

    tuned = json.loads(ray.get(ray.remote(runtime_env={"env_vars": ALLOCATOR_ENV})(measure).remote()))
    plain = json.loads(ray.get(ray.remote(measure).remote()))
    assert tuned["arena_max"] == "1" and plain["arena_max"] is None
    assert tuned["faults"] < 0.1 * plain["faults"]
