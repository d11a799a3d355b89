"""Every file under infra/, checked by the strongest validator available offline.

KubeRay objects: the openAPIV3Schema of KubeRay's own CRDs (tests/fixtures/kuberay), made strict. Core objects:
kubernetes-validate --strict. The launcher YAML: Ray's own schema, and EC2's RunInstances shape for its
node_config. The Dockerfile: hadolint. The install script: shellcheck. The IAM policy: least privilege, derived
from the job config. A file under infra/ that no check here covers fails the suite.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from crd_schemas import served_v1_schema, strict
from infra_manifests import (
    CRD_FIXTURES,
    INFRA,
    MOUNTED_CONFIG,
    REPO,
    documents,
    iam_policy,
    job_config_text,
    manifest,
    manifests,
    submit_command,
)

from camray.config import JobConfig, load_config

BIN = Path(sys.executable).parent
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
CORE_KINDS = ("ConfigMap", "ServiceAccount", "CronJob")
# The oldest and the newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")

# Every file under infra/ and the check that covers it; `path::test` where another folder's tests hold it.
MONITORING_TESTS = "tests/metrics/test_monitoring_files.py"
CHECKS = {
    "README.md": "test_infra_readme_names_every_file_and_only_files_that_exist",
    "install.sh": "test_install_script_passes_shellcheck",
    "docker/Dockerfile": "test_dockerfile_passes_hadolint",
    "aws/cluster.yaml": "test_launcher_config_passes_rays_schema_and_ec2s_shape",
    "kuberay/configmap.yaml": "test_core_objects_pass_kubernetes_validate_strict",
    "kuberay/serviceaccount.yaml": "test_core_objects_pass_kubernetes_validate_strict",
    "kuberay/cronjob.yaml": "test_core_objects_pass_kubernetes_validate_strict",
    "kuberay/raycluster.yaml": "test_kuberay_objects_pass_the_strict_crd_schema",
    "kuberay/rayjob.yaml": "test_kuberay_objects_pass_the_strict_crd_schema",
    "kuberay/raycronjob.yaml": "test_kuberay_objects_pass_the_strict_crd_schema",
    "kuberay/iam-policy.json": "test_iam_policy_grants_only_the_configs_prefixes",
    "monitoring/prometheusrule.yaml": f"{MONITORING_TESTS}::test_the_operator_objects_pass_the_strict_crd_schema",
    "monitoring/podmonitor.yaml": f"{MONITORING_TESTS}::test_the_operator_objects_pass_the_strict_crd_schema",
    "monitoring/rules.yml": f"{MONITORING_TESTS}::test_each_alert_fires_and_stays_quiet_at_the_right_times",
    "monitoring/grafana-dashboard.json": f"{MONITORING_TESTS}::test_the_dashboard_imports_and_reads_one_prometheus",
}


def _check_exists(check: str) -> bool:
    """A test of this module, or `path::test` of another (tests/metrics checks infra/monitoring/)."""
    path, _, name = check.rpartition("::")
    return name in globals() if not path else f"def {name}(" in (REPO / path).read_text()


def test_every_file_under_infra_is_checked():
    present = {path.relative_to(INFRA).as_posix() for path in INFRA.rglob("*") if path.is_file()}
    assert present == set(CHECKS), f"unchecked: {present - set(CHECKS)}; missing: {set(CHECKS) - present}"
    assert all(_check_exists(check) for check in CHECKS.values())


# KubeRay CRDs ------------------------------------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The served v1 openAPIV3Schema of a KubeRay kind, as KubeRay ships it."""
    return served_v1_schema(CRD_FIXTURES / f"ray.io_{kind.lower()}s.yaml", kind)


@functools.cache
def strict_validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(copy.deepcopy(crd_schema(kind))))


def crd_errors(obj: dict[str, Any], *, strict_schema: bool = True) -> list[str]:
    kind = obj["kind"]
    validator = strict_validator(kind) if strict_schema else jsonschema.Draft7Validator(crd_schema(kind))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(obj)]


@pytest.mark.parametrize("kind", KUBERAY_KINDS)
def test_kuberay_objects_pass_the_strict_crd_schema(kind):
    obj = manifest(kind)
    assert obj["apiVersion"] == "ray.io/v1"
    assert crd_errors(obj) == []


def test_the_strict_crd_schema_rejects_misspelt_fields_that_the_plain_one_lets_through():
    rayjob = copy.deepcopy(manifest("RayJob"))
    rayjob["spec"]["shutdownAfterJobFinish"] = rayjob["spec"].pop("shutdownAfterJobFinishes")
    assert crd_errors(rayjob, strict_schema=False) == []
    errors = crd_errors(rayjob)
    assert len(errors) == 1 and "spec: " in errors[0] and "'shutdownAfterJobFinish' was unexpected" in errors[0]

    cronjob = copy.deepcopy(manifest("RayCronJob"))
    gpu = cronjob["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][1]
    gpu["maxReplica"] = gpu.pop("maxReplicas")
    errors = crd_errors(cronjob)
    assert any(e.startswith("spec.jobTemplate.rayClusterSpec.workerGroupSpecs.1: ") for e in errors), errors
    assert any("'maxReplicas' is a required property" in e for e in errors), errors


def _rayjob_specs() -> dict[str, dict[str, Any]]:
    return {"RayJob": manifest("RayJob")["spec"], "RayCronJob": manifest("RayCronJob")["spec"]["jobTemplate"]}


@pytest.mark.parametrize("source", ["RayJob", "RayCronJob"])
def test_rayjob_rules_that_kuberay_checks_outside_its_schema(source):
    spec = _rayjob_specs()[source]
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec, clusterSelector"
    if spec.get("ttlSecondsAfterFinished", 0) > 0:
        assert spec.get("shutdownAfterJobFinishes") is True, "a TTL needs shutdownAfterJobFinishes"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0


def test_the_nightly_template_is_the_rayjob_and_every_cluster_spec_is_one():
    rayjob = manifest("RayJob")["spec"]
    assert manifest("RayCronJob")["spec"]["jobTemplate"] == rayjob
    assert manifest("RayCluster")["spec"] == rayjob["rayClusterSpec"]


def _pods(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods.update({group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]})
    return pods


def test_the_cluster_has_a_cpu_group_and_an_autoscaling_gpu_group_sized_for_the_job(job_config):
    cluster = manifest("RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == _ray_pin()
    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu = groups["gpu"]
    (container,) = gpu["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert (
        limits["nvidia.com/gpu"] >= 1
        and container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
    )
    assert gpu["minReplicas"] >= 1, "the job plans for GPUs only when it sees one at start"
    assert gpu["maxReplicas"] > gpu["minReplicas"]
    (cpu_container,) = groups["cpu"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu_container["resources"]["limits"]
    # One predictor actor a GPU: the config asks for as many actors as the group has GPUs at its bound.
    assert job_config.runtime.num_actors == gpu["maxReplicas"] * limits["nvidia.com/gpu"]


def test_every_pod_runs_as_the_irsa_service_account_and_the_head_mounts_the_job_config():
    account = manifest("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    pods = _pods(manifest("RayCluster")["spec"])
    assert {pod["serviceAccountName"] for pod in pods.values()} == {account["metadata"]["name"]}
    head = pods["head"]
    (container,) = head["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == manifest("ConfigMap")["metadata"]["name"]
    assert f"{mount['mountPath']}/{Path(MOUNTED_CONFIG).name}" == MOUNTED_CONFIG and mount["readOnly"] is True
    # The entrypoint's relative path resolves against the image's repo folder.
    assert container["workingDir"] == _dockerfile_workdir()


def test_every_entrypoint_runs_the_job_on_the_mounted_config():
    entrypoint = shlex.split(manifest("RayJob")["spec"]["entrypoint"])
    assert entrypoint == ["python", "jobs/cam_batch.py", "--config", MOUNTED_CONFIG]
    command = submit_command()
    assert command[:3] == ["ray", "job", "submit"]
    assert command[command.index("--") + 1 :] == entrypoint
    address = command[command.index("--address") + 1]
    assert address == f"http://{manifest('RayCluster')['metadata']['name']}-head-svc:8265"
    assert (REPO / entrypoint[1]).is_file()


def test_every_image_is_a_variant_of_the_dockerfile():
    images: dict[str, set[str]] = {"head": set(), "cpu": set(), "gpu": set()}
    for name, pod in _pods(manifest("RayCluster")["spec"]).items():
        images[name].update(container["image"] for container in pod["containers"])
    (submitter,) = manifest("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    images["head"].add(submitter["image"])
    launcher = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())["docker"]
    images["head"].add(launcher["head_image"])
    images["gpu"].add(launcher["worker_image"])
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for role, variant in (("head", "cpu"), ("cpu", "cpu"), ("gpu", "gpu")):
        assert len(images[role]) == 1
        assert images[role].pop().endswith(f"/camray:{version}-{variant}"), role


# Core Kubernetes objects ---------------------------------------------------------------------------------------


def _kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_pass_kubernetes_validate_strict(version):
    core = {kind: path for kind, (path, _) in manifests().items() if kind in CORE_KINDS}
    assert set(core) == set(CORE_KINDS)
    assert set(manifests()) == set(CORE_KINDS) | set(KUBERAY_KINDS)
    for path in core.values():
        checked = _kubernetes_validate(path, version)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_kubernetes_validate_strict_rejects_a_misspelt_field(tmp_path):
    cronjob = copy.deepcopy(manifest("CronJob"))
    cronjob["spec"]["concurrencyPolicie"] = cronjob["spec"].pop("concurrencyPolicy")
    path = tmp_path / "cronjob.yaml"
    path.write_text(yaml.safe_dump(cronjob))
    checked = _kubernetes_validate(path, KUBERNETES_VERSIONS[-1])
    assert checked.returncode != 0 and "'concurrencyPolicie' was unexpected" in checked.stdout + checked.stderr


def test_the_fallback_cronjob_never_overlaps_and_fails_with_the_run():
    spec = manifest("CronJob")["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and job["template"]["spec"]["restartPolicy"] == "Never"
    assert "--no-wait" not in submit_command(), "the Job must wait for the run to report its status"
    assert manifest("RayCronJob")["spec"]["schedule"] == spec["schedule"]


# The job config and the IAM policy --------------------------------------------------------------------------


@pytest.fixture
def job_config(tmp_path: Path) -> JobConfig:
    """The ConfigMap's job config, loaded as the job loads it from the mounted file."""
    path = tmp_path / Path(MOUNTED_CONFIG).name
    path.write_text(job_config_text())
    return load_config(path)


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def test_the_configmaps_job_config_is_a_valid_s3_job_with_the_bundled_weights(job_config):
    config = job_config
    assert config.source.uri.startswith("s3://") and config.sink.uri.startswith("s3://")
    assert config.model.weights is None, "weights from elsewhere would need their own grant in iam-policy.json"
    assert config.model.name.startswith("efficientnet_lite")


def _grants(policy: dict[str, Any]) -> set[tuple[str, str]]:
    grants = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, "no Not*, no Condition"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        grants.update((action, resource) for action in actions for resource in resources)
    return grants


def test_iam_policy_grants_only_the_configs_prefixes(job_config):
    config = job_config
    source_bucket, source_prefix = _split(config.source.uri)
    sink_bucket, sink_prefix = _split(config.sink.uri)
    expected = {("s3:ListBucket", f"arn:aws:s3:::{source_bucket}"), ("s3:ListBucket", f"arn:aws:s3:::{sink_bucket}")}
    expected |= {("s3:GetObject", f"arn:aws:s3:::{source_bucket}/{source_prefix}{tail}") for tail in ("", "/*")}
    expected |= {
        (action, f"arn:aws:s3:::{sink_bucket}/{sink_prefix}{tail}")
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
        for tail in ("", "/*")
    }
    policy = iam_policy()
    assert policy["Version"] == "2012-10-17"
    assert _grants(policy) == expected


# Container image and install script ---------------------------------------------------------------------------


def _ray_pin() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [dep for dep in dependencies if dep.startswith("ray[")]
    return ray.split("==")[1]


def _dockerfile() -> str:
    return (INFRA / "docker" / "Dockerfile").read_text()


def _dockerfile_workdir() -> str:
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", _dockerfile(), flags=re.M)
    return workdir


def test_dockerfile_passes_hadolint():
    linted = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(INFRA / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_fails_a_dockerfile_that_ends_as_root(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(_dockerfile() + "USER root\n")
    linted = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert linted.returncode != 0 and "DL3002" in linted.stdout


def test_the_image_is_rays_for_the_pinned_versions_and_installs_as_make_install_does():
    dockerfile = _dockerfile()
    (base,) = re.findall(r"^FROM (\S+)$", dockerfile, flags=re.M)
    python = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert base == f"rayproject/ray:{_ray_pin()}-py311-${{VARIANT}}" and ">=3.11,<3.12" in python
    assert re.search(r"^ARG VARIANT=gpu$", dockerfile, flags=re.M)
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, flags=re.M)
    assert user.split(":")[0] not in ("0", "root")
    (run,) = re.findall(r"^RUN (.+)$", dockerfile, flags=re.M)
    assert run.split()[-2:] == ["infra/install.sh", "python"], "the image installs without the test extras"
    makefile = (REPO / "Makefile").read_text()
    assert "infra/install.sh $(PY) --with-tests" in makefile
    copied = {m for line in re.findall(r"^COPY \S+ (.+) \S+$", dockerfile, flags=re.M) for m in line.split()}
    # What the install needs: the project's metadata (its readme too), the package, the entry point, the script.
    assert copied == {"pyproject.toml", "README.md", "camray/", "jobs/", "infra/install.sh"}
    assert _dockerfile_workdir() == "/home/ray/camray"


def test_install_script_passes_shellcheck():
    checked = subprocess.run(
        [str(BIN / "shellcheck"), str(INFRA / "install.sh")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("args", [[], ["python", "--with-test"], ["python", "--with-tests", "extra"]])
def test_install_script_refuses_a_wrong_command_line_before_installing(args):
    ran = subprocess.run(["bash", str(INFRA / "install.sh"), *args], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 2 and ran.stderr.startswith("usage: ")


def _install_targets(tmp_path: Path, *flags: str) -> list[str]:
    """What install.sh asks pip to install, read from the command lines it gives an interpreter that records them."""
    calls = tmp_path / "calls.txt"
    tmp_path.mkdir()
    recorder = tmp_path / "python"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {shlex.quote(str(calls))}\n')
    recorder.chmod(0o755)
    ran = subprocess.run(["bash", str(INFRA / "install.sh"), str(recorder), *flags], capture_output=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    installs = [line.split() for line in calls.read_text().splitlines() if " -e " in f" {line} "]
    return [words[words.index("-e") + 1] for words in installs]


def test_the_image_goes_without_the_demo_data_that_make_install_adds(tmp_path):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[=<>\[ ]", requirement)[0] for requirement in requirements}

    demo = names(project["optional-dependencies"]["demo"])
    assert demo == {"scikit-image", "matplotlib", "imgviz", "scikit-learn"}
    assert not demo & names(project["dependencies"])
    assert _install_targets(tmp_path / "image") == [str(REPO)]  # the Dockerfile's call
    assert _install_targets(tmp_path / "dev", "--with-tests") == [f"{REPO}[test,demo]"]  # make install's


# Ray's cluster launcher on AWS -----------------------------------------------------------------------------------


def _launcher_errors(config: dict[str, Any]) -> list[str]:
    """Ray's own launcher schema (as `ray up` checks it), then each node_config against EC2's RunInstances."""
    import botocore.session
    from botocore.validate import ParamValidator
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except (ValueError, jsonschema.ValidationError) as exc:
        return [str(exc)]
    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    errors = []
    for name, node_type in prepared["available_node_types"].items():
        # Ray's AWS provider adds the counts (and subnets, security groups, tags) before it calls RunInstances.
        report = ParamValidator().validate({**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, shape)
        if report.has_errors():
            errors.append(f"{name}: {report.generate_report()}")
    return errors


def test_launcher_config_passes_rays_schema_and_ec2s_shape():
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    assert _launcher_errors(config) == []
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("m", "c", "r")) and "GPU" not in head["resources"]
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert len(gpu_types) == 1 and gpu_types[0]["max_workers"] > gpu_types[0]["min_workers"] >= 1


def test_launcher_checks_reject_misspelt_fields():
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    top = copy.deepcopy(config)
    top["idle_timeout_minute"] = top.pop("idle_timeout_minutes")
    assert any("idle_timeout_minute" in error for error in _launcher_errors(top))
    node = copy.deepcopy(config)
    node["available_node_types"]["gpu"]["node_config"]["InstanceTyp"] = "g5.2xlarge"
    assert any('Unknown parameter in input: "InstanceTyp"' in error for error in _launcher_errors(node))


# infra/README.md ----------------------------------------------------------------------------------------------


def test_infra_readme_names_every_file_and_only_files_that_exist():
    readme = (INFRA / "README.md").read_text()
    named = set(re.findall(r"`((?:infra/)?(?:docker|kuberay|aws|monitoring)/[\w./-]+|install\.sh)`", readme))
    named = {name.removeprefix("infra/") for name in named}
    assert {name for name in CHECKS if name != "README.md"} <= named
    assert all((INFRA / name).exists() for name in named), named
    assert "RayCronJob" in readme and "feature gate" in readme and "off by default" in readme


def test_documents_hold_one_object_each():
    for path in sorted((INFRA / "kuberay").glob("*.yaml")):
        assert len(documents(path)) == 1, path.name
