"""What a run records about itself: its summary, and its row in `runs/` with the versions, the weights and the
cluster it ran with, so that any result can be traced to the code, model and machines that made it."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import ray

from camray.config import JobConfig
from camray.io.schema import SCHEMA_VERSION

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: str
    listed: int
    skipped: int
    results: int
    errors: int
    seconds: float
    output_uri: str
    result_files: tuple[str, ...]
    attempt: int = 1
    resumed: int = 0
    processed: int = 0
    message: str | None = None
    stats_uri: str | None = None
    errors_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Inputs this attempt accounted for, per second of its wall time."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ModelFacts:
    """The loaded model as the runs row names it, and the input its preprocessing asks for: the canvas side and the
    resampling filter (timm's `pretrained_cfg`; bilinear for the others)."""

    weights_source: str
    weights_sha256: str
    input_size: int
    interpolation: str = "bilinear"


@dataclass(frozen=True)
class ClusterFacts:
    """Alive nodes and their GPU types, read while the cluster is up."""

    nodes: int = 0
    gpu_types: str = ""


def camray_version() -> tuple[str, str | None]:
    """The package version, and the git commit where the code runs from a checkout."""
    try:
        version = metadata.version("camray")
    except metadata.PackageNotFoundError:  # submitted with `--working-dir` to a cluster that lacks the package
        pyproject = REPO / "pyproject.toml"
        version = tomllib.loads(pyproject.read_text())["project"]["version"] if pyproject.exists() else "unknown"
    commit = None
    if (REPO / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = None
    return version, commit


def cluster_facts() -> ClusterFacts:
    """Alive nodes and their GPU types (Ray's `accelerator_type:*` resources), for the runs row."""
    if not ray.is_initialized():
        return ClusterFacts()
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    gpus = sorted(
        {
            key.split(":", 1)[1]
            for node in nodes
            for key in node.get("Resources", {})
            if key.startswith("accelerator_type:")
        }
    )
    return ClusterFacts(len(nodes), ",".join(gpus))


def applied_config(config: JobConfig) -> dict:
    """The config as the run applied it, for the runs row: `boxes.source` as `auto` resolved (`maps` or
    `label_maps`), which the fields around it decide and a reader of the row could not tell otherwise."""
    plain = config.model_dump(mode="json")
    plain["boxes"]["source"] = "label_maps" if config.boxes_from_label_maps() else "maps"
    return plain


def runs_row(
    config: JobConfig,
    summary: RunSummary,
    started: datetime,
    model: ModelFacts | None,
    cluster: ClusterFacts,
    io_retries: int,
) -> dict:
    """The attempt's row of `runs/` (`camray.io.schema.RUNS`)."""
    import torch

    version, commit_sha = camray_version()
    return {
        "run_id": summary.run_id,
        "status": summary.status,
        "started_at": started,
        "finished_at": datetime.now(UTC),
        "config_fingerprint": config.fingerprint(),
        "config_json": json.dumps(applied_config(config), sort_keys=True),
        "model": config.model.name,
        "weights_source": model.weights_source if model else None,
        "weights_sha256": model.weights_sha256 if model else None,
        "input_uri": config.source.uri,
        "listed": summary.listed,
        "skipped": summary.skipped,
        "results": summary.results,
        "errors": summary.errors,
        "seconds": summary.seconds,
        "schema_version": SCHEMA_VERSION,
        "attempt": summary.attempt,
        "message": summary.message,
        "resumed": summary.resumed,
        "images_per_second": summary.images_per_second,
        "errors_by_stage": json.dumps(dict(sorted(summary.errors_by_stage.items()))),
        "io_retries": io_retries,
        "camray_version": version,
        "git_commit": commit_sha,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "nodes": cluster.nodes,
        "gpu_types": cluster.gpu_types,
        "host": socket.gethostname(),
        "stats_uri": summary.stats_uri,
    }
