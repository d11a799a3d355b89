"""Shared fixtures: real photos from installed packages, the bundled model, a real Ray head, a real S3 server."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray Data's usage collector polls a Prometheus that is not there from background threads and logs each
# failure with its traceback. Python 3.11 formats a traceback with `ast.parse`, whose recursion counter is
# shared between threads: a test that parses modules meanwhile fails with "AST constructor recursion depth
# mismatch" (CPython gh-106905). Nothing may be sent home from a test anyway.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

from ray_helpers import cluster_temp_dir, free_port, name_for_its_jobs, node_ports, wait_for_job_agent  # noqa: E402
from server_fixtures import unmarked_server_tests  # noqa: E402

from camray.samples import sample_photos  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before `-m` leaves any test out: every collected test is looked at
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = unmarked_server_tests(items)
    if unmarked:
        raise pytest.UsageError(
            "these tests start the S3 server or a Ray head but are not marked integration, so `make test-fast` "
            f"would run them: {', '.join(unmarked)}"
        )


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in sample_photos().items()}


@pytest.fixture(scope="session")
def built_evalset(tmp_path_factory) -> Path:
    """The truth CSV of one build of the evaluation set (about 9 s of CPU), shared read-only by the tests."""
    from camray.evaluation.evalset import build

    return build(tmp_path_factory.mktemp("evalset_built"))


@pytest.fixture(scope="session")
def _lite0_as_loaded():
    from camray.config import ModelConfig
    from camray.models import resolve_setup

    return resolve_setup(ModelConfig(name="efficientnet_lite0"))


@pytest.fixture
def lite0(_lite0_as_loaded):
    """The bundled EfficientNet-Lite0 as `load_model` returns it, a copy for each test: `Annotator` folds and
    converts the module it is given in place, and no test may see what an earlier one did to it."""
    return copy.deepcopy(_lite0_as_loaded)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto, a process of its own: `camray.bench.moto_process`) on loopback; the AWS chain
    is pointed at it for the whole session."""
    from camray.bench.moto_process import MotoProcess

    server = MotoProcess()
    endpoint = server.start()
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
def ray_head(s3_server: str):
    """One local Ray head with its job server, shared by the integration tests (`ray.cluster_utils.Cluster`,
    this process connected to it); started after the S3 server so that workers and jobs inherit AWS_*."""
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    port = free_port()
    temp_dir = cluster_temp_dir()
    # `Cluster` records the head's address in Ray's default temp folder whatever `temp_dir` says, and fails where
    # that folder does not exist yet: on a fresh machine, when no earlier test or Ray process has made it.
    Path(get_ray_address_file(None)).parent.mkdir(parents=True, exist_ok=True)
    head = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
            "object_store_memory": 1 << 30,
            "temp_dir": temp_dir,
            # Metrics exported every second, not ten: Ray Data's gauges live only as long as their dataset, and
            # a test's run of a few images is over within one default interval (tests/metrics).
            "_system_config": {"metrics_report_interval_ms": 1000},
            **node_ports(),
        },
    )
    name_for_its_jobs(head.gcs_address, temp_dir)
    head.job_address = f"http://127.0.0.1:{port}"
    try:
        wait_for_job_agent(head.job_address)
        yield head
    finally:
        import ray

        ray.shutdown()  # disconnect first: `Cluster.shutdown` refuses to remove the node this process is attached to
        head.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_head) -> str:
    """The shared head's job server address."""
    return ray_head.job_address


@pytest.fixture(scope="session")
def small_photos(photos, tmp_path_factory) -> Path:
    """48 small JPEGs cut from the real photos (different crops and sizes), for runs that must last a while."""
    import io

    from PIL import Image

    folder = tmp_path_factory.mktemp("small-photos")
    names = sorted(photos)
    for index in range(48):
        name = names[index % len(names)]
        image = Image.open(io.BytesIO(photos[name])).convert("RGB")
        width, height = image.size
        inset = (index // len(names)) * 0.03
        box = (int(width * inset), int(height * inset), int(width * (1 - inset)), int(height * (1 - inset)))
        image = image.crop(box)
        image.thumbnail((160 + 8 * (index % 5), 160 + 8 * (index % 5)))
        image.save(folder / f"{index:03d}-{name.rsplit('.', 1)[0]}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def ray_address(ray_cluster: str) -> str:
    """The GCS address of the shared head, for drivers started as separate processes (`RAY_ADDRESS`)."""
    import ray

    return ray.get_runtime_context().gcs_address
