"""Custom resource definitions as JSON schemas, for checking manifests offline (KubeRay's in tests/infra, the
prometheus-operator's in tests/metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with `additionalProperties: false` wherever it lists `properties`, so a misspelt field fails.

    A Kubernetes API server prunes unknown fields silently: a typo such as `shutdownAfterJobFinish` gives a RayJob
    that never shuts its cluster down, an alert without its annotations or a monitor without its relabelings,
    and no error anywhere.
    """
    if "properties" in schema:
        schema.setdefault("additionalProperties", False)
        for sub in schema["properties"].values():
            strict(sub)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        for sub in schema.get(key, []):
            strict(sub)
    return schema


def served_v1_schema(crd_file: Path, kind: str) -> dict[str, Any]:
    """The served v1 openAPIV3Schema of `kind` in a CRD file, as its project ships it."""
    crd = yaml.load(crd_file.read_text(), Loader=yaml.CSafeLoader)
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    return version["schema"]["openAPIV3Schema"]
