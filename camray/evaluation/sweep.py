"""Localization sweep: the predictor (the same code the actors run) over an evaluation set, per config.

`python -m camray.evaluation.sweep [--evalset data/evalset] [--preset fast accurate]
[--set model.input_size=320 boxes.threshold=0.3 ...]` runs in-process without Ray, one configuration per preset
and per `--set` group (or the built-in grid), and prints a table per configuration: box accuracy overall, by
object size and for natural photos and composites apart (so a gain on one cannot hide a loss on the other),
object recall and box precision, MaxBoxAcc and MaxBoxAccV2. docs/localization.md's tables come from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from camray.config import JobConfig, load_config
from camray.evaluation.evalset import build
from camray.evaluation.evaluate import SIZE_BUCKETS, Report, evaluate_rows, load_truth
from camray.image.decode import DecodeLimits
from camray.models import resolve_setup
from camray.predictor import Predictor, decode_side
from camray.presets import PRESETS
from camray.reader import read_decode_batch

GRID: list[dict[str, Any]] = [
    {"model.resize": "squash", "boxes.threshold": 0.2, "boxes.max_boxes_per_class": 1},
    {"model.resize": "letterbox", "boxes.threshold": 0.2},
    {"model.resize": "letterbox", "boxes.threshold": 0.3},
    {"model.resize": "letterbox", "boxes.threshold": 0.4},
    {"model.resize": "letterbox", "model.input_size": 320, "boxes.threshold": 0.3},
    {"model.resize": "letterbox", "model.input_size": 320, "boxes.threshold": 0.4},
    {"model.resize": "letterbox", "model.input_size": 448, "boxes.threshold": 0.4},
    {"model.resize": "letterbox", "boxes.threshold_rule": "percentile", "boxes.threshold": 0.5},
    {"model.name": "efficientnet_lite2", "model.resize": "letterbox", "boxes.threshold": 0.4},
]


def predictor_of(config: JobConfig, run_id: str = "sweep") -> Predictor:
    """The actor's predictor for `config`, built in this process as a run builds it: the setup resolved from the
    config, then handed over as plain data (`camray.models.setup`)."""
    setup = resolve_setup(config.model, config.cam, config.tiling).setup
    return Predictor(config.model_dump(mode="json"), setup.to_plain(), run_id, {})


def decoded_batch(
    config: JobConfig, predictor: Predictor, images: list[Path], labels: dict[str, list[str]] | None = None
) -> dict[str, np.ndarray]:
    """`images` read and decoded as the job's read tasks hand them to `predictor`'s actor, with their `labels`
    (by file name) where given."""
    given = np.empty(len(images), dtype=object)
    given[:] = [None if labels is None else labels.get(p.name) for p in images]
    listing = {
        "uri": np.array([str(p) for p in images], dtype=object),
        "version": np.array([""] * len(images)),
        "labels": given,
    }
    return read_decode_batch(
        listing,
        input_size=decode_side(config.tiling, predictor.annotator.input_size),
        policy=config.model.resize,
        s3={},
        limits=DecodeLimits().__dict__,
        interpolation=predictor.annotator.spec.interpolation,
    )


def annotate_folder(
    config: JobConfig, images: list[Path], batch_size: int = 16, labels: dict[str, list[str]] | None = None
) -> dict[str, dict]:
    """Result rows keyed by file name, computed exactly as the job's tasks and actors would. `labels` gives images
    (by file name) their labels, for `cam.classes` `given` and `both`."""
    predictor = predictor_of(config)
    rows: dict[str, dict] = {}
    for start in range(0, len(images), batch_size):
        decoded = decoded_batch(config, predictor, images[start : start + batch_size], labels)
        for row in predictor(decoded).to_pylist():
            rows[row["image_uri"].rsplit("/", 1)[-1]] = row
    return rows


HEADER = (
    "| configuration | box acc @0.5 | small / medium / large | natural / composite | object recall: all, "
    "small / medium / large | box precision | MaxBoxAcc | MaxBoxAccV2 | seconds |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def is_composite(name: str) -> bool:
    return name.startswith("paste_")


def run(
    evalset: Path, grid: list[tuple[str | None, dict[str, Any]]]
) -> list[tuple[str | None, dict[str, Any], dict[str, Report], float]]:
    """Each (preset, overrides) configuration over the set: reports for `all`, `natural` and `composite`."""
    truth_path = evalset / "truth.csv"
    if not truth_path.exists():
        build(evalset)
    truth = load_truth(truth_path)
    parts = {
        "all": truth,
        "natural": {k: v for k, v in truth.items() if not is_composite(k)},
        "composite": {k: v for k, v in truth.items() if is_composite(k)},
    }
    images = sorted((evalset / "images").glob("*.png"))
    results = []
    for preset, overrides in grid:
        config = load_config(overrides={"sink.uri": "unused", **overrides}, preset=preset)
        clock = time.perf_counter()
        rows = annotate_folder(config, images)
        seconds = time.perf_counter() - clock
        reports = {part: evaluate_rows(rows, part_truth) for part, part_truth in parts.items()}
        results.append((preset, overrides, reports, seconds))
        print(_line(preset, overrides, reports, seconds), flush=True)
    return results


def _by_size(by_size: dict[str, dict[str, float]], measure: str) -> str:
    return " / ".join(f"{by_size[name][measure]:.2f}" if name in by_size else "-" for name, _, _ in SIZE_BUCKETS)


def _line(preset: str | None, overrides: dict[str, Any], reports: dict[str, Report], seconds: float) -> str:
    label = ", ".join(
        [*([f"preset {preset}"] if preset else []), *(f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items())]
    )
    report = reports["all"]
    return (
        f"| {label or 'defaults'} | {report.box_acc:.3f} | {_by_size(report.box_acc_by_size, 'box_acc')} "
        f"| {reports['natural'].box_acc:.2f} / {reports['composite'].box_acc:.2f} "
        f"| {report.object_recall:.3f}, {_by_size(report.object_recall_by_size, 'recall')} "
        f"| {report.box_precision:.3f} | {report.maxboxacc:.3f} | {report.maxboxacc_v2:.3f} | {seconds:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evalset", default="data/evalset", help="folder from `python -m camray.evaluation.evalset`")
    parser.add_argument("--preset", nargs="+", choices=list(PRESETS), default=[], help="one configuration each")
    parser.add_argument(
        "--set", action="append", nargs="+", metavar="FIELD=VALUE", help="one configuration; repeat for more"
    )
    args = parser.parse_args(argv)
    groups = [{k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in group)} for group in args.set or []]
    grid: list[tuple[str | None, dict[str, Any]]] = [(name, {}) for name in args.preset]
    grid += [(None, overrides) for overrides in groups]
    print(HEADER)
    run(Path(args.evalset), grid or [(None, overrides) for overrides in GRID])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
