"""Label-map sweep: the annotator's label maps of the segmentation set, scored in mIoU, in process.

`python -m camray.evaluation.seg_sweep [--segset data/segset] [--head data/kinds_head] [--heads trained imagenet]
[--only WORD ...] [--no-filters] [--no-costs] [--json OUT]` runs in-process without Ray, like
`camray.evaluation.sweep`: each configuration's annotator (the actors' compute) over the set
`camray.evaluation.segset` builds, with each image's classes handed to it (`given`) or kept from its scores
(`predicted`: a sigmoid head's above `cam.min_score`'s default, a softmax head's top-k). It records the scores and
canvases the annotator's label maps are made of (`Annotator.label_maps_of`), so that the label stage can be run
again at other settings without the model, and scores the label maps (`camray.evaluation.segmentation`: mIoU,
background included) on the `test` images (`segset.split_of`), on all, and on the natural photos alone.
Configurations (`CONFIGURATIONS`, `--only` picks by a word of their label): the presets, and `accurate` with every
image tiled. Heads: the one `camray.evaluation.kinds_head` trains, whose classes are the set's, and ImageNet's,
whose classes `segset.IMAGENET_KINDS` maps to the set's.

For each it prints the label stage (`camray.cam.label_maps`, as the job runs it) four ways: the rule alone and the
dense CRF (`masks.refine`), each with the background threshold best on the `dev` images and with each image's own
(`masks.background: auto`); the preset's own setting is marked. For the default candidate (`DEFAULT_LABEL`,
trained head, given classes) also: the reference dense CRF at the canvas's pixels (`pydensecrf`) and the other
refinements of `refiners`, the per-class IoU, and the ignore band; and for each configuration what label maps add
to the job's compute (`cost_study`).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from camray.annotator import CRF_UPSAMPLE, Annotator, decode_side
from camray.cam.dense_crf import CrfSettings, cell_colours
from camray.cam.label_maps import IGNORE, crf_label_maps, label_maps, own_background, resize_label_map
from camray.config import JobConfig, ModelConfig, load_config
from camray.evaluation import refiners
from camray.evaluation.kinds_head import load_head
from camray.evaluation.segmentation import BACKGROUND_NAME, Confusion, SegmentationReport
from camray.evaluation.segset import CLASSES, IMAGENET_KINDS, build, split_of
from camray.image.decode import DecodeLimits
from camray.models import LoadedModel, resolve_setup
from camray.outputs.label_png import read_label_png
from camray.reader import read_decode_batch

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
NAMES = [BACKGROUND_NAME, *CLASSES]  # score indices: the truth's values
AUTO = "auto"
Background = float | str  # a threshold, or `AUTO`


@dataclass
class ImageMaps:
    """One image's kept classes and the scores its label map is made of, with what scoring needs.

    maps (float32[K, R, R]): `Annotator.label_maps_of`'s scores; valid (bool[K]): the kept slots; slot_index
    (int[K]): each slot's index in `NAMES` (0 where the class belongs to none of the set's classes); pixels
    (uint8[S, S, 3]): the decoded canvas, the image in its top-left `valid_wh` (width, height); truth (uint8[H, W]):
    indices in `NAMES`, or IGNORE."""

    name: str
    maps: np.ndarray
    valid: np.ndarray
    slot_index: np.ndarray
    pixels: np.ndarray
    valid_wh: tuple[int, int]
    truth: np.ndarray

    @property
    def canvas(self) -> np.ndarray:
        """uint8[h, w, 3]: the canvas's image region."""
        width, height = self.valid_wh
        return self.pixels[:height, :width]


class RecordingAnnotator(Annotator):
    """The annotator the actors run, keeping the scores and canvases its label maps are made of (`recorded`), so
    that the label stage can be run again at other settings without the model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: list[tuple[Tensor, Tensor]] = []

    def label_maps_of(self, scores: Tensor, kept: Tensor, pixels: Tensor, valid_wh: Tensor) -> Tensor | None:
        self.recorded.append((scores.cpu(), kept.cpu()))
        return super().label_maps_of(scores, kept, pixels, valid_wh)


def _annotator(config: JobConfig, loaded: LoadedModel) -> RecordingAnnotator:
    return RecordingAnnotator(
        copy.deepcopy(loaded),  # the annotator folds its model in place
        config.cam,
        config.boxes,
        torch.device("cpu"),
        tiling=config.tiling,
        masks=config.masks,
    )


def _given_ids(labels: list[str], categories: tuple[str, ...], imagenet: bool) -> list[int]:
    if imagenet:
        return [i for kind in labels for i in IMAGENET_KINDS.get(kind, ())]
    return [categories.index(kind) for kind in labels]


def given_tensor(ids: list[list[int]]) -> Tensor:
    """Each image's labels as (B, G) class ids, padded with -1 (`Annotator.annotate`'s `given`)."""
    out = torch.full((len(ids), max(1, *(len(i) for i in ids))), -1, dtype=torch.long)
    for row, image_ids in enumerate(ids):
        out[row, : len(image_ids)] = torch.tensor(image_ids, dtype=torch.long)
    return out


def _slot_index(class_ids: np.ndarray, categories: tuple[str, ...], imagenet: bool) -> np.ndarray:
    if imagenet:
        kind_of = {i: kind for kind, ids in IMAGENET_KINDS.items() for i in ids}
        return np.array([NAMES.index(kind_of[c]) if c in kind_of else 0 for c in class_ids.tolist()])
    return np.array([NAMES.index(categories[c]) if categories[c] in NAMES else 0 for c in class_ids.tolist()])


def sweep_config(preset: str, overrides: dict[str, Any], given: bool) -> JobConfig:
    """A preset's config with the sweep's class choice: `given` labels, or the predicted ones."""
    classes = {"cam.classes": "given" if given else "predicted"}
    return load_config(overrides={"sink.uri": "unused", **classes, **overrides}, preset=preset)


def manifest(segset: Path) -> list[tuple[str, list[str]]]:
    """The set's images and their labels (`images.csv`)."""
    with (segset / "images.csv").open(newline="") as handle:
        return [(row["uri"], row["labels"].split("|")) for row in csv.DictReader(handle)]


def _decoded(config: JobConfig, side: int, uris: list[str]) -> tuple[dict[str, np.ndarray], Tensor, Tensor]:
    listing = {"uri": np.array(uris, dtype=object), "version": np.array([""] * len(uris))}
    decoded = read_decode_batch(
        listing, input_size=side, policy=config.model.resize, s3={}, limits=DecodeLimits().__dict__
    )
    pixels = torch.from_numpy(np.ascontiguousarray(decoded["pixels"]))
    valid_wh = torch.from_numpy(np.stack([decoded["valid_width"], decoded["valid_height"]], axis=1))
    return decoded, pixels, valid_wh


def collect(
    config: JobConfig, loaded: LoadedModel, imagenet: bool, segset: Path, batch: int = 8
) -> tuple[list[ImageMaps], float]:
    """Every image's label-map scores under `config` (whose `cam.classes` says given or predicted) and the
    annotator's seconds an image (its own label stage included)."""
    annotator = _annotator(config, loaded)
    categories = loaded.setup.class_names
    rows = manifest(segset)
    side = decode_side(config.tiling, annotator.input_size)
    unmapped = [NAMES.index(kind) for kind in CLASSES if kind not in IMAGENET_KINDS]
    out: list[ImageMaps] = []
    seconds = 0.0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        decoded, pixels, valid_wh = _decoded(config, side, [uri for uri, _ in chunk])
        given = given_tensor([_given_ids(labels, categories, imagenet) for _, labels in chunk])
        annotator.recorded.clear()
        clock = time.perf_counter()
        with torch.inference_mode():
            result = annotator.annotate(pixels, valid_wh, given)
        seconds += time.perf_counter() - clock
        ((scores, kept),) = annotator.recorded
        for i, (uri, _) in enumerate(chunk):
            name = Path(uri).stem
            truth = read_label_png(segset / "truth" / f"{name}.png")
            if imagenet:  # the set's classes ImageNet has no class for are not scored
                truth = np.where(np.isin(truth, unmapped), IGNORE, truth).astype(np.uint8)
            valid = kept[i].numpy()
            out.append(
                ImageMaps(
                    name=name,
                    maps=scores[i].numpy(),
                    valid=valid,
                    slot_index=_slot_index(result.class_ids[i].numpy(), categories, imagenet) * valid,
                    pixels=decoded["pixels"][i],
                    valid_wh=(int(valid_wh[i, 0]), int(valid_wh[i, 1])),
                    truth=truth,
                )
            )
    return out, seconds / len(rows)


def _named(item: ImageMaps, grid: np.ndarray) -> np.ndarray:
    """A label map on its grid (0, slot + 1, IGNORE) -> at the image's size in `NAMES` indices."""
    height, width = item.truth.shape
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[1 : len(item.slot_index) + 1] = item.slot_index
    lookup[IGNORE] = IGNORE
    return lookup[resize_label_map(grid, width, height)]


def job_label_map(
    item: ImageMaps,
    background: Background,
    refine: str = "none",
    ignore_below: float | None = None,
    crf: CrfSettings | None = None,
) -> np.ndarray:
    """The image's label map as the annotator's label stage makes it (`Annotator.label_maps_of`) under
    `masks.background`, `masks.refine` and `masks.ignore_below`, at the image's size in `NAMES` indices."""
    maps, valid = torch.from_numpy(item.maps)[None], torch.from_numpy(item.valid)[None]
    level = own_background(maps, valid) if background == AUTO else float(background)
    if refine == "crf":
        wh = torch.tensor([item.valid_wh])
        colours = cell_colours(torch.from_numpy(item.pixels)[None], wh, maps.shape[-1])
        grid = crf_label_maps(maps, valid, level, colours, wh, crf or CrfSettings(), ignore_below, CRF_UPSAMPLE)
    else:
        grid = label_maps(maps, valid, level, ignore_below)
    return _named(item, grid[0].numpy())


def predicted_label_map(item: ImageMaps, background: float, scores: np.ndarray) -> np.ndarray:
    """The rule's label map of refined `scores` (float[K, h, w] over the canvas's image region), at the image's
    size in `NAMES` indices."""
    grid = label_maps(torch.from_numpy(scores)[None], torch.from_numpy(item.valid)[None], background)[0]
    return _named(item, grid.numpy())


def reference_crf_label_map(item: ImageMaps, background: float, **params: Any) -> np.ndarray:
    """The reference dense CRF (`refiners.crf`, pydensecrf) at the canvas's pixels, its unary the rule's scores."""
    marginals = refiners.crf(
        item.maps * item.valid[:, None, None], np.ascontiguousarray(item.canvas), background, **params
    )
    marginals[1:][~item.valid] = 0.0
    return _named(item, marginals.argmax(axis=0).astype(np.uint8))


def score(items: list[ImageMaps], predict: Callable[[ImageMaps], np.ndarray]) -> SegmentationReport:
    confusion = Confusion(NAMES)
    for item in items:
        confusion.add(item.truth, predict(item))
    return confusion.report()


def split(items: list[ImageMaps], part: str) -> list[ImageMaps]:
    return [item for item in items if split_of(item.name) == part]


def best_on_dev(
    items: list[ImageMaps], predict: Callable[[ImageMaps, Any], np.ndarray], candidates: tuple[Any, ...]
) -> tuple[Any, float]:
    """(the candidate, dev mIoU): the setting of `candidates` whose label maps score best on the dev images."""
    dev = split(items, "dev")
    best, chosen = max((score(dev, lambda i, c=c: predict(i, c)).miou, c) for c in candidates)
    return chosen, best


def _line(label: str, items: list[ImageMaps], predict: Callable[[ImageMaps], np.ndarray], extra: str) -> dict:
    test, every = score(split(items, "test"), predict), score(items, predict)
    natural = score([i for i in items if i.name.startswith("photo_")], predict)
    print(f"| {label} | {test.miou:.3f} | {every.miou:.3f} | {natural.miou:.3f} | {extra} |", flush=True)
    return {"label": label, "test": test.miou, "all": every.miou, "photos": natural.miou, "extra": extra}


def _timed(items: list[ImageMaps], work: Callable[[ImageMaps], object]) -> float:
    clock = time.perf_counter()
    for item in items:
        work(item)
    return (time.perf_counter() - clock) / len(items)


def stage_study(items: list[ImageMaps], label: str, config: JobConfig) -> list[dict]:
    """The label stage four ways (the module docstring), then the preset's own setting where it is none of them."""
    own = (config.masks.refine, config.masks.background)
    settings = []
    for refine in ("none", "crf"):
        threshold, _ = best_on_dev(items, lambda i, t, r=refine: job_label_map(i, t, r), THRESHOLDS)
        settings += [(refine, threshold, "chosen on dev"), (refine, AUTO, "each image's own")]
    if own not in [(refine, background) for refine, background, _ in settings]:
        settings.append((*own, "the preset's"))
    lines = []
    for refine, background, how in settings:
        mark = " (the preset's)" if (refine, background) == own else ""
        stage = "dense CRF" if refine == "crf" else "rule"
        line = _line(
            f"{label}, {stage}{mark}",
            items,
            lambda i, b=background, r=refine: job_label_map(i, b, r),
            f"{background} ({how})",
        )
        lines.append({**line, "refine": refine, "background": background, "preset": bool(mark)})
    return lines


def filter_study(items: list[ImageMaps], annotate_seconds: float, label: str) -> list[dict]:
    """The reference dense CRF at the canvas's pixels and the other refinements (`refiners`), each with its
    background threshold chosen on dev, timed an image beside the annotator."""
    out = []
    dev_threshold = {"crf": (0.3, 0.4, 0.5, 0.6), "filter": THRESHOLDS}
    candidates: list[tuple[str, Callable[[ImageMaps], np.ndarray] | None]] = [
        ("reference dense CRF at the canvas's pixels (pydensecrf)", None),
        ("maps bilinear to the canvas", lambda i: refiners.bilinear(i.maps, i.canvas)),
        ("guided filter r=8 eps=0.01", lambda i: refiners.guided(i.maps, i.canvas, 8, 0.01)),
        ("SLIC superpixels n=200", lambda i: refiners.superpixels(i.maps, i.canvas, 200)),
    ]
    for name, refine in candidates:
        if refine is None:
            threshold, _ = best_on_dev(
                items, lambda i, t: reference_crf_label_map(i, t, bilateral_rgb=5.0), dev_threshold["crf"]
            )
            cost = _timed(items, lambda i, t=threshold: reference_crf_label_map(i, t, bilateral_rgb=5.0))
            predict: Callable[[ImageMaps], np.ndarray] = lambda i, t=threshold: reference_crf_label_map(  # noqa: E731
                i, t, bilateral_rgb=5.0
            )
        else:
            clock = time.perf_counter()
            scores = {i.name: refine(i) for i in items}
            cost = (time.perf_counter() - clock) / len(items)
            threshold, _ = best_on_dev(
                items, lambda i, t, s=scores: predicted_label_map(i, t, s[i.name]), dev_threshold["filter"]
            )
            predict = lambda i, s=scores, t=threshold: predicted_label_map(i, t, s[i.name])  # noqa: E731
        out.append(
            _line(
                f"{label} + {name}",
                items,
                predict,
                f"bg {threshold}; {cost * 1000:.0f} ms an image, {cost / annotate_seconds:.2f}x the annotator's",
            )
        )
    return out


def cost_study(config: JobConfig, loaded: LoadedModel, imagenet: bool, segset: Path, rounds: int = 7) -> dict:
    """What label maps add to the job's compute for a batch of the set's first eight images, in interleaved rounds
    (median): the annotator and the batch's result rows without label maps, and with them (the label stage on the
    annotator's device, one RLE per kept class at each image's size in the rows)."""
    from camray.result_rows import RowContext, result_table

    rows = manifest(segset)[:8]
    without = config.model_copy(update={"masks": config.masks.model_copy(update={"label_maps": False})})
    annotators = {"without": _annotator(without, loaded), "with": _annotator(config, loaded)}
    decoded, pixels, valid_wh = _decoded(
        config, decode_side(config.tiling, annotators["with"].input_size), [u for u, _ in rows]
    )
    ids = [_given_ids(labels, loaded.setup.class_names, imagenet) for _, labels in rows]
    given = given_tensor(ids)
    images = {
        "image_uri": np.array([uri for uri, _ in rows], dtype=object),
        "source_version": np.array([""] * len(rows), dtype=object),
        "content_sha256": np.array([""] * len(rows), dtype=object),
        "width": decoded["width"],
        "height": decoded["height"],
        "io_retries": np.zeros(len(rows), dtype=np.int64),
    }
    context = RowContext("m", "cam", "fp", "run", pa.array(loaded.setup.class_names), write_masks=True)

    def step(name: str) -> float:
        clock = time.perf_counter()
        with torch.inference_mode():
            out = annotators[name].annotate(pixels, valid_wh, given)
        result_table(out, images, context, ids)
        return time.perf_counter() - clock

    for name in annotators:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in annotators}
    for _ in range(rounds):
        for name in annotators:
            times[name].append(step(name))
    median = {name: float(np.median(values)) / len(rows) for name, values in times.items()}
    return {
        "without_ms": median["without"] * 1000,
        "with_ms": median["with"] * 1000,
        "ratio": median["with"] / median["without"],
    }


def ignore_band_study(items: list[ImageMaps], background: Background, refine: str) -> list[dict]:
    """The ignore band above `background`, on test: the share of scored pixels it leaves out and the accuracy of
    the pixels it labels."""
    out = []
    test = split(items, "test")
    print("| ignore_below | left out | pixel accuracy of the rest | mIoU of the rest | mIoU, band as a miss |")
    print("|---|---|---|---|---|")
    for ignore_below in (None, 0.5, 0.6, 0.7, 0.8):
        if ignore_below is not None and background != AUTO and ignore_below <= float(background):
            continue
        report = score(test, lambda i, b=ignore_below: job_label_map(i, background, refine, b))
        rest_accuracy = report.pixel_accuracy / max(report.labelled, 1e-9)
        print(
            f"| {ignore_below or 'none'} | {1 - report.labelled:.3f} | {rest_accuracy:.3f} "
            f"| {report.miou_labelled:.3f} | {report.miou:.3f} |",
            flush=True,
        )
        out.append(
            {
                "ignore_below": ignore_below,
                "left_out": 1 - report.labelled,
                "accuracy": rest_accuracy,
                "miou_labelled": report.miou_labelled,
                "miou": report.miou,
            }
        )
    return out


def per_class(items: list[ImageMaps], predict: Callable[[ImageMaps], np.ndarray]) -> dict[str, float | None]:
    report = score(split(items, "test"), predict)
    return {name: entry.iou for name, entry in report.classes.items()}


# (label, preset, overrides): each preset as it is, and `accurate` with every image tiled (its confidence gate,
# `cam.plain_above_score`, sends no tiles through the model for the images a head is sure of).
CONFIGURATIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("`fast`", "fast", {}),
    ("`balanced`", "balanced", {}),
    ("`accurate`", "accurate", {}),
    ("`accurate`, every image tiled", "accurate", {"cam.plain_above_score": None}),
    ("`detect`", "detect", {}),
)
DEFAULT_LABEL = "`balanced`"
HEADER = "| configuration | mIoU test | mIoU all | mIoU photos | background |\n|---|---|---|---|---|"


def load_sweep_head(head: str, head_dir: Path) -> tuple[LoadedModel, bool]:
    """The head's model, loaded as a job loads it, and whether its classes are ImageNet's."""
    if head == "trained":
        return load_head(head_dir / "head.pth", head_dir / "labels.txt"), False
    return resolve_setup(ModelConfig()), True


def run(
    segset: Path,
    head_dir: Path,
    heads: list[str],
    only: list[str] | None = None,
    filters: bool = True,
    costs: bool = True,
) -> dict[str, Any]:
    """The study of the module docstring; `only` keeps the configurations whose label contains one of its words."""
    if not (segset / "images.csv").exists():
        build(segset)
    if "trained" in heads and not (head_dir / "head.pth").exists():
        from camray.evaluation.kinds_head import train

        train(head_dir)
    results: dict[str, Any] = {"configurations": [], "filters": [], "ignore_band": [], "per_class": {}}
    print(HEADER)
    chosen = [c for c in CONFIGURATIONS if not only or any(word in c[0] for word in only)]
    for head in heads:
        loaded, imagenet = load_sweep_head(head, head_dir)
        for label, preset, overrides in chosen:
            if imagenet and label not in ("`fast`", DEFAULT_LABEL):
                continue
            for given in (True, False):
                config = sweep_config(preset, overrides, given)
                items, seconds = collect(config, loaded, imagenet, segset)
                name = f"{label}, {head} head, {'given' if given else 'predicted'} classes"
                for line in stage_study(items, name, config):
                    results["configurations"].append({**line, "seconds": seconds})
                if head == "trained" and given and label == DEFAULT_LABEL:
                    own = (config.masks.background, config.masks.refine)
                    results["per_class"] = per_class(items, lambda i, own=own: job_label_map(i, *own))
                    if filters:
                        results["filters"] = filter_study(items, seconds, name)
                    print(f"\nIgnore band, {name}, the preset's label stage:")
                    results["ignore_band"] = ignore_band_study(items, *own)
                    print(f"\n{HEADER}")
    if costs:
        print("\n| configuration | job's compute without label maps, ms an image | with | ratio |\n|---|---|---|---|")
        loaded, imagenet = load_sweep_head(heads[0], head_dir)
        for label, preset, overrides in chosen:
            cost = cost_study(sweep_config(preset, overrides, True), loaded, imagenet, segset)
            results.setdefault("costs", {})[label] = cost
            print(f"| {label} | {cost['without_ms']:.1f} | {cost['with_ms']:.1f} | {cost['ratio']:.3f}x |", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segset", default="data/segset", help="folder from `python -m camray.evaluation.segset`")
    parser.add_argument("--head", default="data/kinds_head", help="from `python -m camray.evaluation.kinds_head`")
    parser.add_argument("--heads", nargs="+", choices=["trained", "imagenet"], default=["trained", "imagenet"])
    parser.add_argument("--only", nargs="+", help="the configurations whose label holds one of these words")
    parser.add_argument("--no-filters", action="store_true", help="skip the reference CRF and the other filters")
    parser.add_argument("--no-costs", action="store_true", help="skip the timed rounds")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = run(
        Path(args.segset),
        Path(args.head),
        args.heads,
        only=args.only,
        filters=not args.no_filters,
        costs=not args.no_costs,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
