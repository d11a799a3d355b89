"""Secrets never leak, and the cluster stays locked.

The integration test runs jobs with `ray job submit` on a Ray head of its own, started with S3 credentials in
its environment (as a cluster gets them from its nodes) and token authentication on, against an S3 server that
checks every request's signature (moto with IAM enforced): the secret is really the one in use. It then reads
everything the runs leave behind, a succeeding run with a missing object and a failing run, and finds neither
the S3 secret nor the Ray token anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from ray_helpers import free_port

from camray.cli import main as cli_main
from camray.config import ConfigError, load_config
from camray.io.sources import S3Settings

REPO = Path(__file__).resolve().parents[1]
BUCKET = "camray-secrets"
PASSWORD = "hunter2-do-not-print"


@pytest.mark.parametrize(
    "endpoint", [f"http://minio-user:{PASSWORD}@minio:9000", f"https://{PASSWORD}@s3.example.com", "user@host:9000"]
)
def test_an_endpoint_with_credentials_is_refused_naming_the_field(endpoint):
    with pytest.raises(ConfigError) as info:
        load_config(overrides={"storage.s3_endpoint_url": endpoint})
    message = str(info.value)
    assert "storage.s3_endpoint_url" in message and "must not hold credentials" in message
    assert PASSWORD not in message and "minio-user" not in message
    assert PASSWORD not in str(info.value.__cause__)  # nor the pydantic error it wraps, shown in tracebacks


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_an_endpoint_with_credentials_from_the_environment_is_refused(variable, monkeypatch, capsys, tmp_path):
    """The job stops before any work with exit status 2 and a message naming the variable, not the password."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv(variable, f"http://key:{PASSWORD}@127.0.0.1:9")
    with pytest.raises(ValueError, match=f"the {variable} environment variable must not hold credentials"):
        S3Settings().resolved_endpoint()
    assert cli_main(["--input", "s3://bucket/images", "--output", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr()
    assert variable in printed.err and PASSWORD not in printed.out + printed.err
    assert not (tmp_path / "out").exists()


@dataclass(frozen=True)
class SignedS3:
    endpoint: str
    access_key: str
    secret_key: str

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
            access_key=self.access_key,
            secret_key=self.secret_key,
            allow_bucket_creation=True,
        )


def _wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    """Returns once `port` accepts connections; raises if `process` exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {seconds} s")


def _clean_env() -> dict[str, str]:
    """This process's environment without any AWS or Ray settings another fixture may have left."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}


@pytest.fixture(scope="module")
def signed_s3() -> Iterator[SignedS3]:
    """A moto S3 server that verifies signatures (IAM enforced after the first three requests, which create a
    user, its policy and its access key): the key it hands out is the only one that works."""
    import boto3

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port)],
        env={**_clean_env(), "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, server)
        endpoint = f"http://127.0.0.1:{port}"
        region = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", **region)
        iam.create_user(UserName="camray")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="camray", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="camray")["AccessKey"]
        yield SignedS3(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.terminate()
        server.wait(30)


@dataclass(frozen=True)
class SecuredRay:
    address: str
    temp_dir: Path
    token: str


def _start_head(env: dict[str, str], temp_dir: Path, attempt: int) -> tuple[subprocess.Popen, int] | None:
    """`ray start --head --block`; returns it and its dashboard port once its node is up, None if it gave up.

    Every port is named: the defaults (job agent 52365, client server 10001) are taken on a shared machine."""
    port = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": port,
        "--dashboard-agent-listen-port": free_port(),
        "--ray-client-server-port": free_port(),
    }
    log = temp_dir / f"head-{attempt}.log"  # read back with the rest of the session's files
    with log.open("w") as output:
        head = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ray.scripts.scripts",
                "start",
                "--head",
                "--block",
                "--disable-usage-stats",
                "--num-cpus=2",
                "--object-store-memory=300000000",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--temp-dir={temp_dir}",
                *(f"{flag}={value}" for flag, value in ports.items()),
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its processes form a group of their own, stopped together
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if head.poll() is not None:
            return None  # on an overloaded machine the raylet can miss Ray's fixed 30 s to register
        if "block forever" in log.read_text():
            return head, port
        time.sleep(1)
    _stop_head(head)
    return None


def _stop_head(head: subprocess.Popen) -> None:
    """Stops every process of the head at once: `ray start --block` on SIGTERM stops them one by one, each with
    its own grace period (half a minute here), and the test needs none of them to say goodbye."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=2)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # whatever of the group outlived its SIGTERM
        os.killpg(head.pid, signal.SIGKILL)
    head.wait()


@pytest.fixture(scope="module")
def secured_ray(signed_s3: SignedS3) -> Iterator[SecuredRay]:
    """A Ray head of its own, with the S3 credentials in its environment and token authentication on."""
    token = secrets.token_hex(16)
    temp_dir = Path(tempfile.mkdtemp(prefix="camray-sec-"))  # short: Ray's socket paths live below it
    env = {
        **_clean_env(),
        "AWS_ACCESS_KEY_ID": signed_s3.access_key,
        "AWS_SECRET_ACCESS_KEY": signed_s3.secret_key,
        "AWS_ENDPOINT_URL": signed_s3.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    started = None
    for attempt in range(3):
        started = _start_head(env, temp_dir, attempt)
        if started:
            break
    assert started, f"no Ray head started; see {temp_dir}"
    head, port = started
    try:
        cluster = SecuredRay(f"http://127.0.0.1:{port}", temp_dir, token)
        deadline = time.monotonic() + 120
        while _ray_cli(cluster, "list", "--address", cluster.address).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the job server at {cluster.address} does not answer")
            time.sleep(2)
        yield cluster
    finally:
        _stop_head(head)
        if os.environ.get("CAMRAY_KEEP_SECRETS_TEST_DIR") is None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_cli(cluster: SecuredRay, *args: str, token: bool = True) -> subprocess.CompletedProcess:
    """`ray job ...` as a user runs it: the token as docs/deployment.md says, no AWS credentials on this side."""
    env = _clean_env()
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    return subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "job", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )


def _submit(cluster: SecuredRay, submission_id: str, *job_args: str) -> subprocess.CompletedProcess:
    """Submits and follows a job; retried while the head's job agent is still starting (Ray answers 500)."""
    deadline = time.monotonic() + 120
    while True:
        submitted = _ray_cli(
            cluster,
            "submit",
            "--address",
            cluster.address,
            "--submission-id",
            submission_id,
            "--working-dir",
            str(REPO),
            "--",
            sys.executable,
            "jobs/cam_batch.py",
            *job_args,
        )
        if "No available agent to submit job" not in submitted.stderr or time.monotonic() > deadline:
            return submitted
        time.sleep(2)


def _files_below(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _bucket_text(fs: pafs.FileSystem) -> dict[str, bytes]:
    """Every object in the bucket: Parquet decoded to text (its pages may be compressed), the rest raw."""
    texts = {}
    for info in fs.get_file_info(pafs.FileSelector(BUCKET, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        if info.path.endswith(".parquet"):
            table = pads.dataset(info.path, filesystem=fs, format="parquet").to_table()
            texts[info.path] = str(table.to_pylist()).encode()
        else:
            with fs.open_input_stream(info.path) as stream:
                texts[info.path] = stream.read()
    return texts


@pytest.mark.integration
def test_a_cluster_with_token_auth_refuses_a_submission_without_the_token(secured_ray):
    refused = _ray_cli(secured_ray, "list", "--address", secured_ray.address, token=False)
    assert refused.returncode != 0
    assert "Authentication required" in refused.stdout + refused.stderr
    impostor = SecuredRay(secured_ray.address, secured_ray.temp_dir, "0" * 32)
    wrong = _ray_cli(impostor, "list", "--address", secured_ray.address)
    assert wrong.returncode != 0
    assert "Authentication failed" in wrong.stdout + wrong.stderr
    allowed = _ray_cli(secured_ray, "list", "--address", secured_ray.address)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


@pytest.mark.integration
def test_no_secret_in_anything_a_run_leaves_behind(signed_s3, secured_ray, photos):
    fs = signed_s3.filesystem()
    fs.create_dir(BUCKET)
    for name in ("chelsea.png", "grace_hopper.jpg"):
        with fs.open_output_stream(f"{BUCKET}/images/{name}") as stream:
            stream.write(photos[name])
    manifest = [f"s3://{BUCKET}/images/{name}" for name in ("chelsea.png", "grace_hopper.jpg", "missing.jpg")]
    with fs.open_output_stream(f"{BUCKET}/manifest.txt") as stream:
        stream.write("\n".join(manifest).encode())
    # The server really checks the secret: the same key with another secret is refused.
    wrong = SignedS3(signed_s3.endpoint, signed_s3.access_key, "x" * len(signed_s3.secret_key)).filesystem()
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        wrong.open_input_stream(f"{BUCKET}/manifest.txt").read()

    ok = _submit(
        secured_ray, "camray-secrets-ok", "--input", f"s3://{BUCKET}/manifest.txt", "--output", f"s3://{BUCKET}/out"
    )
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-4000:]
    assert "succeeded: 3 listed, 0 skipped (already done), 2 results, 1 errors" in ok.stdout
    failed = _submit(
        secured_ray,
        "camray-secrets-failed",
        "--input",
        f"s3://{BUCKET}/manifest.txt",
        "--output",
        f"s3://{BUCKET}/out-failed",
        "--weights",
        f"s3://{BUCKET}/models/missing.pth",
    )
    assert failed.returncode != 0
    assert f"weights s3://{BUCKET}/models/missing.pth do not exist" in failed.stdout + failed.stderr

    left_behind: dict[str, bytes] = {
        "submit ok": (ok.stdout + ok.stderr).encode(),
        "submit failed": (failed.stdout + failed.stderr).encode(),
    }
    for submission in ("camray-secrets-ok", "camray-secrets-failed"):
        logs = _ray_cli(secured_ray, "logs", "--address", secured_ray.address, submission)
        assert logs.returncode == 0 and "camray" in logs.stdout
        left_behind[f"ray job logs {submission}"] = (logs.stdout + logs.stderr).encode()
    session_files = list(_files_below(secured_ray.temp_dir))
    assert any(path.suffix in (".out", ".err", ".log") for path in session_files)
    left_behind.update({str(path): path.read_bytes() for path in session_files})
    bucket = _bucket_text(fs)
    assert any("/runs/" in path for path in bucket) and any("/errors/" in path for path in bucket)
    left_behind.update(bucket)

    runs = pads.dataset(f"{BUCKET}/out/runs", filesystem=fs, format="parquet").to_table().to_pylist()
    assert [run["status"] for run in runs] == ["succeeded"] and runs[0]["config_json"]
    errors = pads.dataset(f"{BUCKET}/out/errors", filesystem=fs, format="parquet").to_table().to_pylist()
    assert [(row["image_uri"], row["stage"]) for row in errors] == [(manifest[2], "read")]

    for secret, what in ((signed_s3.secret_key, "the S3 secret"), (secured_ray.token, "the Ray token")):
        leaks = [where for where, data in left_behind.items() if secret.encode() in data]
        assert not leaks, f"{what} appears in {leaks[:5]}"
    assert len(left_behind) > 20  # logs of every Ray process, the tables, the job logs were all read
