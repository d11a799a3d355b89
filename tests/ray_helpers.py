"""Helpers for tests that start Ray themselves: free ports, and waiting for a head's job server."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from camray.bench.moto_process import free_port

REPO = Path(__file__).resolve().parents[1]
# Batches, read+decode batches and Parquet files of four images: a few dozen photos make many tasks and files,
# so that a fault injected mid-run meets work already written and work still to do.
SMALL_BATCHES = ("--runtime.batch_size", "4", "--runtime.decode_batch_size", "4", "--sink.rows_per_file", "4")


def submit_command(address: str, *entrypoint: str) -> list[str]:
    """`ray job submit` of `entrypoint` to the job server at `address`, with this checkout as the working dir."""
    return [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--",
        *entrypoint,
    ]


def node_ports() -> dict[str, int]:
    """Ports of one Ray node that would otherwise be fixed defaults (the dashboard agent's 52365): with two
    Ray instances on the machine (the shared head and a multi-node cluster, or a benchmark beside the tests), the
    second agent could not bind, and every job submission failed with "No available agent"."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port()}


def cluster_temp_dir() -> str:
    """A Ray temp folder of one cluster's own (short: Ray's socket paths live below it). A job's driver finds its
    cluster through the address file in the temp folder of the node that runs it (the job supervisor passes it
    `RAY_ADDRESS=auto`): two clusters sharing `/tmp/ray` (the tests' own, another session's `ray start`, a
    benchmark beside the tests) would send one's jobs to the other."""
    return tempfile.mkdtemp(prefix="camray-ray-", dir="/tmp")


def name_for_its_jobs(gcs_address: str, temp_dir: str) -> None:
    """Writes the cluster's address into its own temp folder, where its job drivers look (`ray start` does this;
    `ray.cluster_utils.Cluster` writes the machine's default `/tmp/ray` instead)."""
    from ray._private.utils import write_ray_address

    write_ray_address(gcs_address, temp_dir)


def wait_for_job_agent(address: str, timeout_s: float = 180.0) -> None:
    """Returns once the job server places jobs: its agent registers a while after the head starts, and until
    then every submission fails with "No available agent" (for a minute on a loaded machine)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    while not client.get_job_status(job).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)


@contextlib.contextmanager
def driver_kv_kept() -> Iterator[None]:
    """Starts Ray nodes in this process without moving its driver: starting a node points Ray's process-wide
    internal-KV client at that node's GCS, and once that cluster is torn down the first `internal_kv` call from
    this process (Ray Data makes them) retries for 60 s and then Ray ends the whole process, pytest with it:
    exit 1, no summary."""
    from ray.experimental import internal_kv

    saved = internal_kv.internal_kv_get_gcs_client()
    try:
        yield
    finally:
        if saved is None:
            internal_kv._internal_kv_reset()
        else:
            internal_kv._initialize_internal_kv(saved)


@contextlib.contextmanager
def machine_default_cluster_restored() -> Iterator[None]:
    """For a second cluster on this machine, alive for the block. Starting its head makes it the machine's
    default (`/tmp/ray/ray_current_cluster`), which is right while it runs: a job's driver connects to the
    cluster that file names (the job supervisor passes it `RAY_ADDRESS=auto`). Afterwards the earlier one is
    the default again, or none is."""
    from ray._common.utils import reset_ray_address
    from ray._private.utils import read_ray_address, write_ray_address

    saved = read_ray_address()
    try:
        yield
    finally:
        if saved is None:
            reset_ray_address()
        else:
            write_ray_address(saved)
