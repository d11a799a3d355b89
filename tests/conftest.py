"""Shared fixtures: real photos from installed packages, the bundled model, a real Ray head, a real S3 server."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.samples import sample_photos  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in sample_photos().items()}


@pytest.fixture(scope="session")
def lite0():
    from pipeline.config import ModelConfig
    from pipeline.models import load_model

    return load_model(ModelConfig(name="efficientnet_lite0"))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto) on loopback; the AWS chain is pointed at it for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns test output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in _AWS_ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[str]:
    """One local Ray head with its job server, shared by the integration tests; returns the job address.

    Started after the S3 server so that workers and submitted jobs inherit the AWS_* environment.
    """
    import ray

    port = free_port()
    ray.init(
        # "local": a new head even where `ray start` left /tmp/ray/ray_current_cluster, which a plain
        # `ray.init()` would join (another session's cluster on a shared machine)
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        logging_level="WARNING",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray.shutdown()
