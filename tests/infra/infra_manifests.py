"""Reading infra/: the manifests by kind, the job config held in the ConfigMap, the commands that run the job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
CRD_FIXTURES = REPO / "tests" / "fixtures" / "kuberay"
# Where the ConfigMap's job config is mounted on the Ray head; the entrypoints name this path.
MOUNTED_CONFIG = "/etc/camray/job.yaml"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under infra/kuberay/, by kind; a kind twice is an error."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in documents(path):
            kind = doc["kind"]
            if kind in found:
                raise ValueError(f"{path.name} and {found[kind][0].name} both hold a {kind}")
            found[kind] = (path, doc)
    return found


def manifest(kind: str) -> dict[str, Any]:
    return manifests()[kind][1]


def job_config_text() -> str:
    """The camray job config that the ConfigMap holds, as the head sees it at MOUNTED_CONFIG."""
    configmap = manifest("ConfigMap")
    key = Path(MOUNTED_CONFIG).name
    return configmap["data"][key]


def iam_policy() -> dict[str, Any]:
    return json.loads((KUBERAY / "iam-policy.json").read_text())


def submit_command() -> list[str]:
    """The fallback CronJob's container command: `ray job submit ... -- ENTRYPOINT`."""
    pod = manifest("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return list(container["command"])
