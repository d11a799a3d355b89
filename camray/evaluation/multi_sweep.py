"""Candidate sweep for several objects an image: each configuration over the multi-object set and the evaluation set.

`python -m camray.evaluation.multi_sweep [--scenes data/scenes] [--evalset data/evalset] [--preset fast detect]
[--set tiling.enabled=true tiling.propose_score=0.3 ...] [--classes predicted|given] [--head imagenet|DIR]
[--imagenet-labels best|all] [--min-score S]` runs in-process without Ray, with the predictor the actors run
(`camray.evaluation.sweep.annotate_folder`), one configuration per preset and per `--set` group, and prints one
table row each: on the multi-object set object recall, box precision, AP50 (per kind and class-agnostic), recall by
COCO size and the 24 scenes' recall and precision alone; on the evaluation set its single-object box accuracy and
multi-object measures; the seconds. `--min-score` scores only boxes at or above that score, as `camray export
--min-score` keeps them.

`--classes given` hands every image its truth kinds as image-level labels (`cam.classes: given`,
`camray.evaluation.given_labels`): with `--head imagenet` (ImageNet's head), each kind as the kind's class the head
scores highest on the image (`--imagenet-labels all`: every class of the kind); with `--head DIR`, the head
`camray.evaluation.kinds_head` wrote there (`head.pth`, `labels.txt`, a sigmoid head whose classes are the kinds),
each kind by name. Box accuracy then scores the first box of a given class. With `--head DIR` the truth is
re-targeted to the head's classes whatever `--classes` (its predicted classes are the sigmoid head's above
`cam.min_score`).

`--costs SECONDS` also times each configuration's predictor against `fast`'s (the same head, classes and labels),
side by side in interleaved rounds on one batch of 16 scenes (`camray.bench.throughput.side_by_side`, at least
SECONDS a configuration): the compute an actor does for a batch the read tasks decoded, label maps and rows
included. It prints each configuration's time an image as a multiple of `fast`'s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml

from camray.bench.throughput import side_by_side
from camray.config import JobConfig, load_config
from camray.evaluation import evalset, scenes
from camray.evaluation.evaluate import Truth, evaluate_rows, load_truth
from camray.evaluation.given_labels import (
    ImagenetRule,
    head_scores,
    image_kinds,
    imagenet_labels,
    trained_labels,
    truth_for_head,
)
from camray.evaluation.multi import COCO_SIZES, MultiReport, detections_from_rows, evaluate_detections
from camray.evaluation.sweep import annotate_folder, decoded_batch, predictor_of
from camray.presets import PRESETS

HEADER = (
    "| configuration | scenes: recall / precision | AP50 kind / agnostic | recall small / medium / large "
    "| the 24 scenes alone: recall / precision | evalset: box acc | evalset: recall / precision / AP50 | seconds |"
    "\n|---|---|---|---|---|---|---|---|"
)
IMAGENET = "imagenet"


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


def head_overrides(head: str) -> dict[str, Any]:
    """The model fields of a head: none for ImageNet's, else the trained head in folder `head` (a sigmoid Lite0)."""
    if head == IMAGENET:
        return {}
    folder = Path(head)
    return {
        "model.name": "efficientnet_lite0",
        "model.weights": str(folder / "head.pth"),
        "model.labels": str(folder / "labels.txt"),
        "model.head": "sigmoid",
    }


def sweep_config(head: Head, classes: str, preset: str | None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """A configuration of the sweep: `preset` and `overrides` with `head`'s model fields and `classes`."""
    fields = {"sink.uri": "unused", **head_overrides(head.head), "cam.classes": classes, **(overrides or {})}
    return load_config(overrides=fields, preset=preset)


class Head:
    """A head (`imagenet` or a trained head's folder): the truth it is scored against and each image's labels
    (module docstring)."""

    def __init__(self, head: str = IMAGENET, imagenet_rule: ImagenetRule = "best") -> None:
        self.head = head
        self.imagenet_rule = imagenet_rule
        self._categories: tuple[str, ...] | None = None

    def categories(self) -> tuple[str, ...]:
        if self._categories is None:
            self._categories = tuple((Path(self.head) / "labels.txt").read_text().split())
        return self._categories

    def truth(self, truth: dict[str, Truth]) -> dict[str, Truth]:
        return truth if self.head == IMAGENET else truth_for_head(truth, self.categories())

    def labels(self, config: JobConfig, truth: dict[str, Truth], images: list[Path]) -> dict[str, list[str]]:
        if self.head != IMAGENET:
            return trained_labels(image_kinds(truth), self.categories())
        # The kind's best class by the whole image at the model's own input size, whatever the configuration's.
        scoring = config.model_copy(update={"model": config.model.model_copy(update={"input_size": None})})
        scores = head_scores(scoring, images) if self.imagenet_rule == "best" else None
        return imagenet_labels(truth, scores, self.imagenet_rule)


def run(
    scenes_dir: Path,
    evalset_dir: Path,
    grid: list[tuple[str | None, dict[str, Any]]],
    min_score: float = 0.0,
    head: Head | None = None,
    classes: str = "predicted",
) -> list[dict[str, Any]]:
    """Each (preset, overrides) over both sets with `head` (ImageNet's by default), its classes predicted or the
    images' labels given (`classes`); the reports, as plain data."""
    head = head or Head()
    given = classes == "given"
    scene_truth = head.truth(load_truth(_truth(scenes_dir, scenes.build)))
    single_truth = head.truth(load_truth(_truth(evalset_dir, evalset.build)))
    scene_images = sorted((scenes_dir / "images").glob("*.png"))
    single_images = sorted((evalset_dir / "images").glob("*.png"))
    scenes_alone = {name: gt for name, gt in scene_truth.items() if name.startswith("scene_")}
    results = []
    for preset, overrides in grid:
        config = sweep_config(head, classes, preset, overrides)
        scene_labels = single_labels = None
        if given:
            scene_labels = head.labels(config, scene_truth, scene_images)
            single_labels = head.labels(config, single_truth, single_images)
        clock = time.perf_counter()
        # An image the head has no class of its kinds for cannot be given any: it is left out, as a job's error row.
        scene_rows = annotate_folder(config, _labelled(scene_images, scene_labels), labels=scene_labels)
        single_rows = annotate_folder(config, _labelled(single_images, single_labels), labels=single_labels)
        seconds = time.perf_counter() - clock
        detections = detections_from_rows(scene_rows)
        multi = evaluate_detections(detections, scene_truth, min_score)
        alone = evaluate_detections(detections, scenes_alone, min_score)
        single_multi = evaluate_detections(detections_from_rows(single_rows), single_truth, min_score)
        single = evaluate_rows(single_rows, single_truth, box_of="given" if given else "top1")
        label = _label(preset, overrides)
        print(
            f"| {label or 'defaults'} | {multi.object_recall:.3f} / {multi.box_precision:.3f} "
            f"| {_ap(multi.ap50)} / {_ap(multi.ap50_agnostic)} | {_by_size(multi)} "
            f"| {alone.object_recall:.3f} / {alone.box_precision:.3f} | {single.box_acc:.3f} "
            f"| {single_multi.object_recall:.3f} / {single_multi.box_precision:.3f} / {_ap(single_multi.ap50)} "
            f"| {seconds:.0f} |",
            flush=True,
        )
        rows = (scene_rows, single_rows)
        results.append(
            {
                "label": label,
                "scenes": multi,
                "scenes_alone": alone,
                "evalset": single_multi,
                "single": single,
                "rows": rows,
                "seconds": seconds,
            }
        )
    return results


COST_BATCH = 16


def costs_vs_fast(
    configs: list[tuple[str, JobConfig]],
    head: Head,
    scenes_dir: Path,
    classes: str,
    seconds: float,
) -> dict[str, float]:
    """Each labelled configuration's time an image over `fast`'s under the same head and classes, the median of
    the ratios within interleaved rounds on the set's first `COST_BATCH` scenes (module docstring)."""
    truth = head.truth(load_truth(_truth(scenes_dir, scenes.build)))
    images = sorted((scenes_dir / "images").glob("scene_*.png"))[:COST_BATCH]
    fast = sweep_config(head, classes, "fast")
    labels = head.labels(fast, truth, images) if classes == "given" else None
    images = _labelled(images, labels)
    steps = {}
    for label, config in [("fast", fast), *configs]:
        predictor = predictor_of(config)
        decoded = decoded_batch(config, predictor, images, labels)
        steps[label] = lambda p=predictor, d=decoded: p(d)
    timed = side_by_side(steps, len(images), seconds)
    ratios = {label: 1.0 / timed.ratio(label, "fast") for label, _ in configs}
    print("| configuration | time an image vs `fast` |\n|---|---|")
    for label, ratio in ratios.items():
        print(f"| {label} | {ratio:.2f}x |", flush=True)
    return ratios


def _label(preset: str | None, overrides: dict[str, Any]) -> str:
    return ", ".join([*([f"preset {preset}"] if preset else []), *(f"{k}={v}" for k, v in overrides.items())])


def _labelled(images: list[Path], labels: dict[str, list[str]] | None) -> list[Path]:
    return images if labels is None else [path for path in images if path.name in labels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default="data/scenes", help="folder from `python -m camray.evaluation.scenes`")
    parser.add_argument("--evalset", default="data/evalset", help="folder from `python -m camray.evaluation.evalset`")
    parser.add_argument("--preset", nargs="+", choices=list(PRESETS), default=[], help="one configuration each")
    parser.add_argument("--set", action="append", nargs="+", metavar="FIELD=VALUE", help="one configuration each")
    parser.add_argument("--min-score", type=float, default=0.0, help="score only boxes with score >= S")
    parser.add_argument(
        "--classes", choices=["predicted", "given"], default="predicted", help="given: the truth kinds as labels"
    )
    parser.add_argument(
        "--head",
        default=IMAGENET,
        help="`imagenet`, or a folder from `python -m camray.evaluation.kinds_head` (head.pth, labels.txt)",
    )
    parser.add_argument(
        "--imagenet-labels", choices=["best", "all"], default="best", help="how a kind becomes ImageNet classes"
    )
    parser.add_argument("--costs", type=float, metavar="SECONDS", help="also time each configuration against fast")
    args = parser.parse_args(argv)
    groups = [{k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in group)} for group in args.set or []]
    grid: list[tuple[str | None, dict[str, Any]]] = [(name, {}) for name in args.preset]
    grid += [(None, overrides) for overrides in groups]
    print(HEADER)
    head = Head(args.head, args.imagenet_labels)
    grid = grid or [(None, {})]
    run(Path(args.scenes), Path(args.evalset), grid, args.min_score, head, args.classes)
    if args.costs:
        configs = [
            (_label(preset, overrides), sweep_config(head, args.classes, preset, overrides))
            for preset, overrides in grid
        ]
        costs_vs_fast(configs, head, Path(args.scenes), args.classes, args.costs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
