"""Several Ray nodes on this machine (`ray.cluster_utils.Cluster`, the harness Ray tests multi-node behaviour
with): a head with its job server and worker nodes, each with its own raylet, object store and weights cache.
Jobs go through `ray job submit`, reading and writing S3 (moto), with weights from an `s3://` URI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from ray_helpers import (
    REPO,
    SMALL_BATCHES,
    cluster_temp_dir,
    driver_kv_kept,
    free_port,
    machine_default_cluster_restored,
    name_for_its_jobs,
    node_ports,
    submit_command,
    wait_for_job_agent,
)
from readers import runs, succeeded_inputs

from camray.bench.moto_process import recorded_requests

BUCKET = "camray-nodes"
WEIGHTS_KEY = "weights/efficientnet_lite0.pth"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    """A head that runs no work (as on KubeRay) and two 2-CPU worker nodes, each with its own weights cache."""
    caches = tmp_path_factory.mktemp("node-caches")
    with machine_default_cluster_restored():
        with driver_kv_kept():
            head = _start_cluster(caches)
        try:
            wait_for_job_agent(f"http://{head.webui_url}")
            head.caches = caches
            yield head
        finally:
            # Not `Cluster.shutdown`: its guard against removing the driver's own node compares raylet socket
            # names, which this process's connection to the shared head can match. Each node's processes are
            # its own.
            for node in [*head.worker_nodes, head.head_node]:
                node.kill_all_processes(check_alive=False, allow_graceful=True)
            shutil.rmtree(head.temp_dir, ignore_errors=True)


def _start_cluster(caches: Path):
    from ray.cluster_utils import Cluster

    temp_dir = cluster_temp_dir()  # the worker nodes take the head's
    head = Cluster(
        initialize_head=True,
        # No process reaper: stopping one with SIGTERM makes it kill its whole process group, which is this test
        # process's and holds the shared head too; the fixture stops each node's own processes.
        shutdown_at_exit=False,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            "env_vars": {"CAMRAY_CACHE": str(caches / "head")},
            "temp_dir": temp_dir,
            **node_ports(),
        },
    )
    head.temp_dir = temp_dir
    name_for_its_jobs(head.gcs_address, temp_dir)
    for name in ("worker-1", "worker-2"):
        head.add_node(num_cpus=2, env_vars={"CAMRAY_CACHE": str(caches / name)}, **node_ports())
    head.wait_for_nodes()
    return head


@pytest.fixture(scope="module")
def bucket(s3_server, small_photos) -> str:
    from camray.models import get_spec

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(small_photos.iterdir()):
        s3.put_object(Bucket=BUCKET, Key=f"images/{path.name}", Body=path.read_bytes())
    s3.put_object(
        Bucket=BUCKET, Key=WEIGHTS_KEY, Body=Path(get_spec("efficientnet_lite0").bundled_weights()).read_bytes()
    )
    return BUCKET


def _submit(cluster, output: str, *extra: str, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    command = submit_command(
        f"http://{cluster.webui_url}",
        sys.executable,  # the job's interpreter on this machine's nodes: the test's, with camray's dependencies
        "jobs/cam_batch.py",
        "--input",
        f"s3://{BUCKET}/images",
        "--output",
        output,
        "--weights",
        f"s3://{BUCKET}/{WEIGHTS_KEY}",
        *SMALL_BATCHES,
        *extra,
    )
    if wait:
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights_downloads(requests: list[dict]) -> int:
    """GETs of the weights object that start at byte 0: one per download, however it is chunked."""
    count = 0
    for entry in requests:
        headers = {key.lower(): value for key, value in entry["headers"].items()}
        if entry["method"] == "GET" and WEIGHTS_KEY in entry["url"]:
            if headers.get("range", "bytes=0-").startswith("bytes=0-"):
                count += 1
    return count


def _predictor_nodes(cluster) -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=f"http://{cluster.webui_url}", detail=True, limit=10_000, raise_on_missing_output=False
    )
    return {actor.node_id for actor in actors if "MapWorker" in (actor.class_name or "")}


def test_a_job_spreads_over_the_nodes_and_fetches_weights_once_per_node(cluster, bucket, tmp_path):
    with recorded_requests(os.environ["AWS_ENDPOINT_URL"]) as requests:
        output = f"s3://{BUCKET}/out-{uuid.uuid4().hex[:6]}"
        submitted = _submit(cluster, output)
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, log[-4000:]

    [run] = runs(output)
    assert run["status"] == "succeeded" and run["nodes"] == 3
    seen = succeeded_inputs(output)
    assert set(seen) == {f"s3://{BUCKET}/images/{key}" for key in _image_keys()} and set(seen.values()) == {1}

    assert len(_predictor_nodes(cluster)) == 2, "predictor actors ran on both worker nodes"
    cached = {node.name: list(node.glob("weights/*.pth")) for node in cluster.caches.iterdir()}
    assert {name: len(files) for name, files in cached.items()} == {"head": 1, "worker-1": 1, "worker-2": 1}
    assert _weights_downloads(requests) == 3, "once on the head (the driver's check), once on each worker node"


def _image_keys() -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="images/")
    return [item["Key"].removeprefix("images/") for item in listing["Contents"]]


def _staged_files(output: str) -> int:
    """The write tasks' files in a new output's table folders: staged there, and committed only as the run ends."""
    bucket, _, prefix = output.removeprefix("s3://").partition("/")
    files = 0
    for table in ("results", "errors"):
        listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{table}/")
        files += sum(1 for item in listing.get("Contents", []) if item["Key"].endswith(".parquet"))
    return files


@pytest.mark.faults
def test_a_node_removed_mid_run_loses_nothing(cluster, bucket):
    with driver_kv_kept():
        cache = str(cluster.caches / "worker-3")
        extra = cluster.add_node(num_cpus=2, env_vars={"CAMRAY_CACHE": cache}, **node_ports())
        cluster.wait_for_nodes()
    output = f"s3://{BUCKET}/out-{uuid.uuid4().hex[:6]}"
    # A pool that fits on the nodes that survive: an actor of a lost node restarts only where there is room, and
    # its retried batch waits for it (on KubeRay or the launcher a replacement node makes the room).
    job = _submit(cluster, output, "--runtime.num_actors", "2", wait=False)
    deadline = time.monotonic() + 600
    while _staged_files(output) < 2:  # some batches written: the run is in full flow
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-4000:] if job.stdout else ""
        time.sleep(0.2)
    extra.kill_all_processes(check_alive=False, allow_graceful=False)  # the node is lost: SIGKILL, no goodbye
    cluster.worker_nodes.discard(extra)
    log, _ = job.communicate(timeout=900)
    statuses = [row["status"] for row in runs(output)]
    if job.returncode != 0:  # the run gave up on what the node held: the next run must finish the rest
        assert statuses and statuses[-1] in ("incomplete", "failed"), log[-4000:]
        again = _submit(cluster, output)
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    seen = succeeded_inputs(output)
    assert set(seen) == {f"s3://{BUCKET}/images/{key}" for key in _image_keys()} and set(seen.values()) == {1}
