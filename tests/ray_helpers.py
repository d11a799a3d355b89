"""Helpers for tests that start Ray themselves: free ports, and waiting for a head's job server."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_ports() -> dict[str, int]:
    """Ports of one Ray node that would otherwise be fixed defaults (the dashboard agent's 52365): with two
    Ray instances on the machine (the shared head and a multi-node cluster, or a benchmark beside the tests), the
    second agent could not bind, and every job submission failed with "No available agent"."""
    return {"dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port()}


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
