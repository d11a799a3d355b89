"""Candidate sweep for several objects an image: each configuration over the multi-object set and the evaluation set.

`python -m camray.evaluation.multi_sweep [--scenes data/scenes] [--evalset data/evalset] [--preset fast detect]
[--set detect.enabled=true detect.propose_score=0.3 ...]` runs in-process without Ray, with the predictor the
actors run (`camray.evaluation.sweep.annotate_folder`), one configuration per preset and per `--set` group, and
prints one table row each: on the scenes object recall, box precision, AP50 (per kind and class-agnostic) and
recall by COCO size; on the evaluation set its single-object box accuracy and multi-object measures; the seconds.
`--min-score` scores only boxes at or above that score, as `camray export --min-score` keeps them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml

from camray.config import load_config
from camray.evaluation import evalset, scenes
from camray.evaluation.evaluate import evaluate_rows, load_truth
from camray.evaluation.multi import COCO_SIZES, MultiReport, detections_from_rows, evaluate_detections
from camray.evaluation.sweep import annotate_folder
from camray.presets import PRESETS

HEADER = (
    "| configuration | scenes: recall / precision | AP50 kind / agnostic | recall small / medium / large "
    "| evalset: box acc | evalset: recall / precision / AP50 | seconds |\n|---|---|---|---|---|---|---|"
)


def _truth(folder: Path, builder: Any) -> Path:
    truth = folder / "truth.csv"
    if not truth.exists():
        builder(folder)
    return truth


def _by_size(report: MultiReport) -> str:
    by_size = report.object_recall_by_size
    return " / ".join(f"{by_size[name]['recall']:.2f}" if name in by_size else "-" for name, _, _ in COCO_SIZES)


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run(
    scenes_dir: Path, evalset_dir: Path, grid: list[tuple[str | None, dict[str, Any]]], min_score: float = 0.0
) -> list[dict[str, Any]]:
    """Each (preset, overrides) over both sets; the reports, as plain data."""
    scene_truth = load_truth(_truth(scenes_dir, scenes.build))
    single_truth = load_truth(_truth(evalset_dir, evalset.build))
    results = []
    for preset, overrides in grid:
        config = load_config(overrides={"sink.uri": "unused", **overrides}, preset=preset)
        clock = time.perf_counter()
        scene_rows = annotate_folder(config, sorted((scenes_dir / "images").glob("*.png")))
        single_rows = annotate_folder(config, sorted((evalset_dir / "images").glob("*.png")))
        seconds = time.perf_counter() - clock
        multi = evaluate_detections(detections_from_rows(scene_rows), scene_truth, min_score)
        single_multi = evaluate_detections(detections_from_rows(single_rows), single_truth, min_score)
        single = evaluate_rows(single_rows, single_truth)
        label = ", ".join([*([f"preset {preset}"] if preset else []), *(f"{k}={v}" for k, v in overrides.items())])
        print(
            f"| {label or 'defaults'} | {multi.object_recall:.3f} / {multi.box_precision:.3f} "
            f"| {_ap(multi.ap50)} / {_ap(multi.ap50_agnostic)} | {_by_size(multi)} | {single.box_acc:.3f} "
            f"| {single_multi.object_recall:.3f} / {single_multi.box_precision:.3f} / {_ap(single_multi.ap50)} "
            f"| {seconds:.0f} |",
            flush=True,
        )
        rows = (scene_rows, single_rows)
        results.append({"label": label, "scenes": multi, "evalset": single_multi, "single": single, "rows": rows})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="data/scenes", help="folder from `python -m camray.evaluation.scenes`")
    parser.add_argument("--evalset", default="data/evalset", help="folder from `python -m camray.evaluation.evalset`")
    parser.add_argument("--preset", nargs="+", choices=list(PRESETS), default=[], help="one configuration each")
    parser.add_argument("--set", action="append", nargs="+", metavar="FIELD=VALUE", help="one configuration each")
    parser.add_argument("--min-score", type=float, default=0.0, help="score only boxes with score >= S")
    args = parser.parse_args(argv)
    groups = [{k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in group)} for group in args.set or []]
    grid: list[tuple[str | None, dict[str, Any]]] = [(name, {}) for name in args.preset]
    grid += [(None, overrides) for overrides in groups]
    print(HEADER)
    run(Path(args.scenes), Path(args.evalset), grid or [(None, {})], args.min_score)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
