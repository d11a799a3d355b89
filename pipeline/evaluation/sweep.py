"""Localization sweep: the predictor (the same code the actors run) over an evaluation set, per config.

`python -m pipeline.evaluation.sweep [--evalset data/evalset] [--set model.input_size=320 boxes.threshold=0.3 ...]`
runs in-process without Ray, one configuration per `--set` group (or the built-in grid), and prints a table
of box accuracy and MaxBoxAccV2 per configuration. The README's localization table comes from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.config import JobConfig, load_config
from pipeline.evaluation.evalset import build
from pipeline.evaluation.evaluate import SIZE_BUCKETS, Report, evaluate_rows, load_truth
from pipeline.image.decode import DecodeLimits
from pipeline.models import get_spec
from pipeline.predictor import Predictor, decode_side
from pipeline.reader import read_decode_batch

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


def annotate_folder(config: JobConfig, images: list[Path], batch_size: int = 16) -> dict[str, dict]:
    """Result rows keyed by file name, computed exactly as the job's tasks and actors would."""
    input_size = config.model.input_size or get_spec(config.model.name).input_size
    predictor = Predictor(config.model_dump(mode="json"), "sweep", input_size, {})
    rows: dict[str, dict] = {}
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        listing = {"uri": np.array([str(p) for p in chunk], dtype=object), "version": np.array([""] * len(chunk))}
        decoded = read_decode_batch(
            listing,
            input_size=decode_side(config.tiling, input_size),
            policy=config.model.resize,
            s3={},
            limits=DecodeLimits().__dict__,
        )
        for row in predictor(decoded).to_pylist():
            rows[row["image_uri"].rsplit("/", 1)[-1]] = row
    return rows


def run(evalset: Path, grid: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Report, float]]:
    truth_path = evalset / "truth.csv"
    if not truth_path.exists():
        build(evalset)
    truth = load_truth(truth_path)
    images = sorted((evalset / "images").glob("*.png"))
    results = []
    for overrides in grid:
        config = load_config(overrides={"sink.uri": "unused", **overrides})
        clock = time.perf_counter()
        rows = annotate_folder(config, images)
        seconds = time.perf_counter() - clock
        report = evaluate_rows(rows, truth)
        results.append((overrides, report, seconds))
        print(_line(overrides, report, seconds), flush=True)
    return results


def _line(overrides: dict[str, Any], report: Report, seconds: float) -> str:
    label = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items()) or "defaults"
    by_size = " / ".join(
        f"{report.box_acc_by_size[name]['box_acc']:.2f}" if name in report.box_acc_by_size else "-"
        for name, _, _ in SIZE_BUCKETS
    )
    return (
        f"| {label} | {report.box_acc:.3f} | {by_size} | {report.top1_loc:.3f} | {report.maxboxacc:.3f} "
        f"| {report.maxboxacc_v2:.3f} | {report.best_threshold:.2f} | {seconds:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evalset", default="data/evalset", help="folder from `python -m pipeline.evaluation.evalset`")
    parser.add_argument(
        "--set", action="append", nargs="+", metavar="FIELD=VALUE", help="one configuration; repeat for more"
    )
    args = parser.parse_args(argv)
    grid = (
        [{k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in group)} for group in args.set]
        if args.set
        else GRID
    )
    print(
        "| configuration | box acc @0.5 | small / medium / large | top-1 loc | MaxBoxAcc | MaxBoxAccV2 "
        "| best map threshold | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    run(Path(args.evalset), grid)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
