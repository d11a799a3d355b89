"""The manifests' own job, run for real: the fallback CronJob's `ray job submit` command, whose entrypoint is the
RayJob's and the RayCronJob's, with the ConfigMap's job config, against a real Ray head and S3 endpoint.

Only what the cluster provides is swapped in: the job server's address, the file at the config's mount path,
the repository as the working dir (the image's working directory on the head), and an interpreter with camray
first on PATH. Every S3 request the run makes is recorded by the endpoint (moto's recorder) and checked against
iam-policy.json.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow.dataset as pads
import pytest
import yaml
from infra_manifests import MOUNTED_CONFIG, REPO, iam_policy, job_config_text, manifest, submit_command

from camray.bench.moto_process import recorded_requests
from camray.io.sources import S3Settings, filesystem_for

pytestmark = pytest.mark.integration

PHOTOS = ("chelsea.png", "coffee.png", "grace_hopper.jpg")


def request_line(entry: dict) -> str:
    """A recorded request as `METHOD /bucket/key?query`, the path-style target S3 authorises."""
    parts = urlsplit(entry["url"])
    return f"{entry['method']} {parts.path}" + (f"?{parts.query}" if parts.query else "")


def iam_request(line: str) -> tuple[str, str]:
    """The IAM action and resource that S3 authorises a path-style request against."""
    method, target = line.split(" ", 1)
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
    if not key:
        if method in ("GET", "HEAD") and ("list-type" in query or method == "HEAD"):
            return "s3:ListBucket", f"arn:aws:s3:::{bucket}"
        if method == "POST" and "delete" in query:
            # DeleteObjects names its keys in the body; each needs s3:DeleteObject. pyarrow sends it only for the
            # run's staging folder, under the output prefix.
            return "s3:DeleteObject", f"arn:aws:s3:::{bucket}/*"
        return f"s3:(bucket {method} {parts.query})", f"arn:aws:s3:::{bucket}"
    resource = f"arn:aws:s3:::{bucket}/{key}"
    if method in ("GET", "HEAD"):
        return "s3:GetObject", resource
    if method in ("PUT", "POST"):  # a plain or copied put, or a multipart upload's parts
        return "s3:PutObject", resource
    return ("s3:AbortMultipartUpload" if "uploadId" in query else "s3:DeleteObject"), resource


def allowed(policy: dict, action: str, resource: str) -> bool:
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if action not in actions:
            continue
        # A DeleteObjects request stands for keys under some granted prefix of its bucket.
        if resource.endswith("/*") and any(r.startswith(resource[:-1]) for r in resources):
            return True
        if any(fnmatch.fnmatchcase(resource, pattern) for pattern in resources):
            return True
    return False


def test_iam_request_mapping_and_the_policy_check_refuse_what_the_policy_does_not_grant():
    policy = iam_policy()
    config = yaml.safe_load(job_config_text())
    source = config["source"]["uri"].removeprefix("s3://").rstrip("/")
    bucket = source.split("/")[0]
    assert allowed(policy, *iam_request(f"GET /{source}/cat.png"))
    assert not allowed(policy, *iam_request(f"PUT /{source}/cat.png"))
    assert not allowed(policy, *iam_request(f"GET /{bucket}/elsewhere/cat.png"))
    assert not allowed(policy, *iam_request(f"PUT /{bucket}"))  # CreateBucket
    assert iam_request(f"HEAD /{bucket}") == ("s3:ListBucket", f"arn:aws:s3:::{bucket}")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def test_the_manifests_job_runs_as_submitted_and_needs_no_more_than_the_iam_policy(
    ray_cluster, s3_server, photos, tmp_path
):
    import boto3

    config_text = job_config_text()
    config = yaml.safe_load(config_text)
    source_bucket, source_prefix = _split(config["source"]["uri"])
    sink_bucket, sink_prefix = _split(config["sink"]["uri"])
    s3 = boto3.client("s3")
    for bucket in {source_bucket, sink_bucket}:
        s3.create_bucket(Bucket=bucket)
    inputs = {name: photos[name] for name in PHOTOS}
    inputs["broken.jpg"] = photos["grace_hopper.jpg"][:2000]
    for name, data in inputs.items():
        s3.put_object(Bucket=source_bucket, Key=f"{source_prefix}/{name}", Body=data)

    mounted = tmp_path / Path(MOUNTED_CONFIG).name
    mounted.write_text(config_text)
    command = submit_command()
    entrypoint = command[command.index("--") + 1 :]
    assert entrypoint == shlex.split(manifest("RayJob")["spec"]["entrypoint"])
    options = command[3 : command.index("--")]
    options[options.index("--address") + 1] = ray_cluster
    # The image's python is camray's; here that is this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    options += ["--working-dir", str(REPO), "--runtime-env-json", json.dumps({"env_vars": {"PATH": path}})]
    entrypoint = [str(mounted) if arg == MOUNTED_CONFIG else arg for arg in entrypoint]

    with recorded_requests(s3_server) as recorded:
        for _ in range(5):
            submitted = subprocess.run(
                [str(Path(sys.executable).parent / "ray"), "job", "submit", *options, "--", *entrypoint],
                capture_output=True,
                text=True,
                timeout=600,
                cwd=tmp_path,
            )
            # The job server refuses, and submits nothing, while its agent is too slow to answer (a loaded host).
            if "No available agent to submit job" not in submitted.stderr + submitted.stdout:
                break
            time.sleep(5)
    log = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, log[-4000:]
    assert f"succeeded: {len(inputs)} listed" in log

    fs, _ = filesystem_for(config["sink"]["uri"], S3Settings())
    rows = {}
    for kind in ("results", "errors"):
        table = pads.dataset(f"{sink_bucket}/{sink_prefix}/{kind}", filesystem=fs, format="parquet").to_table()
        rows[kind] = table.column("image_uri").to_pylist()
    expected = sorted(f"s3://{source_bucket}/{source_prefix}/{name}" for name in inputs)
    assert sorted(rows["results"] + rows["errors"]) == expected
    assert [uri.rsplit("/", 1)[-1] for uri in rows["errors"]] == ["broken.jpg"]

    # pyarrow probes a bucket named so that it cannot exist, and ignores the answer.
    made = [line for line in map(request_line, recorded) if "/$extremelyunlikelytoexist$" not in unquote(line)]
    assert any(line.startswith("PUT ") for line in made) and any(line.startswith("GET ") for line in made)
    policy = iam_policy()
    denied = sorted({line for line in made if not allowed(policy, *iam_request(line))})
    assert denied == [], f"requests iam-policy.json would refuse: {denied}"
