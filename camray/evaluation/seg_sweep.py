"""Label-map sweep: the annotator's maps of the segmentation set turned into label maps and scored in mIoU.

`python -m camray.evaluation.seg_sweep [--segset data/segset] [--head data/kinds_head] [--heads trained imagenet]
[--only WORD ...] [--crf-scale 5 10] [--no-crf] [--no-costs] [--json OUT]` runs in-process without Ray, like
`camray.evaluation.sweep`: each configuration's annotator (the actors' compute) over the set
`camray.evaluation.segset` builds, its maps made label maps by `camray.cam.label_maps`, scored by
`camray.evaluation.segmentation` (mIoU, background included). Configurations (`CONFIGURATIONS`, `--only` picks by a
word of their label): `fast`, `balanced` and `accurate`, the last two also with their maps refined for every image.
Heads: the one `camray.evaluation.kinds_head` trains, whose classes are the set's, and ImageNet's, whose classes
`segset.IMAGENET_KINDS` maps to the set's. Classes: `given` (each image's labels) and `predicted` (the sigmoid
head's classes scoring `MIN_SCORE` or more, at most `cam.top_k`; the softmax head's top-k). For each it prints:

- the `background` threshold best on the `dev` images (`segset.split_of`), and the mIoU on `test`, on every image
  and on the natural photos alone;
- the same after the dense CRF (`camray.evaluation.refiners.crf`), its colour scale and threshold chosen on dev,
  and its cost an image beside the annotator's;
- for the default candidate (`DEFAULT_LABEL`, trained head, given classes): the other refinements of `refiners`,
  the per-class IoU, and the ignore band (`ignore_below`) above the chosen threshold: the share of pixels it leaves
  out and the accuracy of those it labels.

Until the job keeps given classes (the `classes` work), the classes are set here, by handing the annotator's class
picker the image's classes; everything else is the annotator the actors run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camray.annotator import Annotator, _Forward, decode_side
from camray.cam.label_maps import IGNORE, label_maps, resize_label_map
from camray.config import JobConfig, load_config
from camray.evaluation import refiners
from camray.evaluation.kinds_head import load_head
from camray.evaluation.segmentation import BACKGROUND_NAME, Confusion, SegmentationReport
from camray.evaluation.segset import CLASSES, IMAGENET_KINDS, build, split_of
from camray.image.decode import DecodeLimits
from camray.models import LoadedModel, load_model
from camray.outputs.label_png import read_label_png
from camray.reader import read_decode_batch

MIN_SCORE = 0.5  # a sigmoid head's class is kept from this probability (`cam.min_score` of the classes work)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
NAMES = [BACKGROUND_NAME, *CLASSES]  # score indices: the truth's values
CRF_COLOUR_SCALES = (5.0, 10.0)  # the bilateral kernel's colour scale, chosen on dev with the threshold
CRF_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class ImageMaps:
    """One image's kept classes and their maps, with what scoring needs.

    maps (float32[K, R, R]), valid (bool[K]), slot_index (int[K]): each slot's index in `NAMES` (0 where the
    class belongs to none of the set's classes); canvas (uint8[h, w, 3]): the decoded canvas's valid region;
    truth (uint8[H, W]): indices in `NAMES`, or IGNORE."""

    name: str
    maps: np.ndarray
    valid: np.ndarray
    slot_index: np.ndarray
    canvas: np.ndarray
    truth: np.ndarray


class ChosenClasses(Annotator):
    """The annotator with its classes chosen outside: `chosen` (B, K), set before each batch, replaces the top-k of
    the whole-image pass (the tiles follow it), and a sigmoid head's scores are its probabilities."""

    def __init__(self, *args: Any, sigmoid: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sigmoid = sigmoid
        self.chosen: Tensor | None = None

    def _forward(self, x: Tensor, keep_activation: bool, classes: Tensor | None = None) -> _Forward:
        if classes is None and self.chosen is not None:
            classes = self.chosen.to(x.device)
        return super()._forward(x, keep_activation, classes)

    def _scores(self, forward: _Forward) -> Tensor:
        if self.sigmoid:
            return torch.sigmoid(forward.logits.float()).gather(1, forward.class_ids)
        return super()._scores(forward)


def _annotator(config: JobConfig, loaded: LoadedModel, sigmoid: bool) -> ChosenClasses:
    input_size = config.model.input_size or loaded.spec.input_size
    return ChosenClasses(
        loaded, config.cam, config.boxes, input_size, torch.device("cpu"), tiling=config.tiling, sigmoid=sigmoid
    )


def _given_ids(labels: list[str], categories: tuple[str, ...], imagenet: bool) -> list[int]:
    if imagenet:
        return [i for kind in labels for i in IMAGENET_KINDS.get(kind, ())]
    return [categories.index(kind) for kind in labels]


def _slot_index(class_ids: np.ndarray, categories: tuple[str, ...], imagenet: bool) -> np.ndarray:
    if imagenet:
        kind_of = {i: kind for kind, ids in IMAGENET_KINDS.items() for i in ids}
        return np.array([NAMES.index(kind_of[c]) if c in kind_of else 0 for c in class_ids.tolist()])
    return np.array([NAMES.index(categories[c]) if categories[c] in NAMES else 0 for c in class_ids.tolist()])


def collect(
    config: JobConfig, loaded: LoadedModel, sigmoid: bool, imagenet: bool, segset: Path, given: bool, batch: int = 8
) -> tuple[list[ImageMaps], float]:
    """Every image's maps under `config` (given or predicted classes) and the annotator's seconds an image."""
    annotator = _annotator(config, loaded, sigmoid)
    categories = loaded.spec.categories
    rows = _manifest(segset)
    side = decode_side(config.tiling, annotator.input_size)
    out: list[ImageMaps] = []
    seconds = 0.0
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        listing = {"uri": np.array([uri for uri, _ in chunk], dtype=object), "version": np.array([""] * len(chunk))}
        decoded = read_decode_batch(
            listing, input_size=side, policy=config.model.resize, s3={}, limits=DecodeLimits().__dict__
        )
        pixels = torch.from_numpy(np.ascontiguousarray(decoded["pixels"]))
        valid_wh = torch.from_numpy(np.stack([decoded["valid_width"], decoded["valid_height"]], axis=1))
        if given:  # padded with a class of the image (class 0 where the head has none of its classes), not kept
            ids = [_given_ids(labels, categories, imagenet) for _, labels in chunk]
            k = max(1, *(len(i) for i in ids))
            annotator.chosen = torch.tensor([i + [i[0] if i else 0] * (k - len(i)) for i in ids])
            valid = np.array([[slot < len(i) for slot in range(k)] for i in ids])
        else:
            annotator.chosen = None
        clock = time.perf_counter()
        with torch.inference_mode():
            result = annotator.annotate(pixels, valid_wh)
        seconds += time.perf_counter() - clock
        if not given:
            valid = (result.scores >= MIN_SCORE).numpy() if sigmoid else np.ones(result.scores.shape, dtype=bool)
        for i, (uri, _) in enumerate(chunk):
            name = Path(uri).stem
            truth = read_label_png(segset / "truth" / f"{name}.png")
            if imagenet:  # the set's classes ImageNet has no class for are not scored
                unmapped = [NAMES.index(kind) for kind in CLASSES if kind not in IMAGENET_KINDS]
                truth = np.where(np.isin(truth, unmapped), IGNORE, truth).astype(np.uint8)
            w, h = int(decoded["valid_width"][i]), int(decoded["valid_height"][i])
            class_ids = result.class_ids[i].numpy()
            out.append(
                ImageMaps(
                    name=name,
                    maps=result.maps[i].numpy(),
                    valid=valid[i],
                    slot_index=_slot_index(class_ids, categories, imagenet) * valid[i],
                    canvas=decoded["pixels"][i, :h, :w],
                    truth=truth,
                )
            )
    return out, seconds / len(rows)


def _manifest(segset: Path) -> list[tuple[str, list[str]]]:
    import csv

    with (segset / "images.csv").open(newline="") as handle:
        return [(row["uri"], row["labels"].split("|")) for row in csv.DictReader(handle)]


Refine = Callable[[ImageMaps], np.ndarray]


def predicted_label_map(
    item: ImageMaps, background: float, ignore_below: float | None = None, scores: np.ndarray | None = None
) -> np.ndarray:
    """The image's label map at its original size, in `NAMES` indices: from its maps, or from refined `scores`
    (float[K, h, w]) where given."""
    source = item.maps if scores is None else scores
    grid = label_maps(torch.from_numpy(source)[None], torch.from_numpy(item.valid)[None], background, ignore_below)[
        0
    ].numpy()
    height, width = item.truth.shape
    slots = resize_label_map(grid, width, height)
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[1 : len(item.slot_index) + 1] = item.slot_index
    lookup[IGNORE] = IGNORE
    return lookup[slots]


def crf_label_map(item: ImageMaps, background: float, **params: Any) -> np.ndarray:
    marginals = refiners.crf(item.maps * item.valid[:, None, None], item.canvas, background, **params)
    marginals[1:][~item.valid] = 0.0
    grid = marginals.argmax(axis=0).astype(np.uint8)  # 0 background, k + 1 slot k
    height, width = item.truth.shape
    lookup = np.zeros(256, dtype=np.uint8)
    lookup[1 : len(item.slot_index) + 1] = item.slot_index
    return lookup[resize_label_map(grid, width, height)]


def score(items: list[ImageMaps], predict: Callable[[ImageMaps], np.ndarray]) -> SegmentationReport:
    confusion = Confusion(NAMES)
    for item in items:
        confusion.add(item.truth, predict(item))
    return confusion.report()


def split(items: list[ImageMaps], part: str) -> list[ImageMaps]:
    return [item for item in items if split_of(item.name) == part]


def best_threshold(items: list[ImageMaps], scores: dict[str, np.ndarray] | None = None) -> tuple[float, float]:
    """(threshold, dev mIoU): the background threshold of `THRESHOLDS` with the best mIoU on the dev images."""
    dev = split(items, "dev")
    refined = scores or {}
    results = [
        (score(dev, lambda i, t=t: predicted_label_map(i, t, scores=refined.get(i.name))).miou, t) for t in THRESHOLDS
    ]
    best, threshold = max(results)
    return threshold, best


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


def crf_study(
    items: list[ImageMaps], annotate_seconds: float, label: str, scales: tuple[float, ...] = CRF_COLOUR_SCALES
) -> dict:
    """The dense CRF on the label rule's scores: its bilateral colour scale and the background threshold chosen
    on dev, scored on test, timed an image beside the annotator."""
    dev = split(items, "dev")
    candidates = [
        (score(dev, lambda i, t=t, rgb=rgb: crf_label_map(i, t, bilateral_rgb=rgb)).miou, t, rgb)
        for rgb in scales
        for t in CRF_THRESHOLDS
    ]
    _, threshold, rgb = max(candidates)
    cost = _timed(items, lambda i: refiners.crf(i.maps, i.canvas, threshold, bilateral_rgb=rgb))
    return _line(
        f"{label} + dense CRF",
        items,
        lambda i: crf_label_map(i, threshold, bilateral_rgb=rgb),
        f"bg {threshold}, colour scale {rgb}; {cost * 1000:.0f} ms an image, {cost / annotate_seconds:.2f}x the "
        "annotator's",
    )


def filter_study(items: list[ImageMaps], annotate_seconds: float, label: str) -> list[dict]:
    """The other refinements (`refiners`), each with the background threshold chosen on dev."""
    out = []
    candidates: list[tuple[str, Refine]] = [
        ("maps bilinear to the canvas", lambda i: refiners.bilinear(i.maps, i.canvas)),
        ("guided filter r=8 eps=0.01", lambda i: refiners.guided(i.maps, i.canvas, 8, 0.01)),
        ("guided filter r=4 eps=0.001", lambda i: refiners.guided(i.maps, i.canvas, 4, 0.001)),
        ("SLIC superpixels n=200", lambda i: refiners.superpixels(i.maps, i.canvas, 200)),
    ]
    for name, refine in candidates:
        clock = time.perf_counter()
        scores = {i.name: refine(i) for i in items}
        cost = (time.perf_counter() - clock) / len(items)
        threshold, _ = best_threshold(items, scores)
        out.append(
            _line(
                f"{label} + {name}",
                items,
                lambda i, s=scores, t=threshold: predicted_label_map(i, t, scores=s[i.name]),
                f"bg {threshold}; {cost * 1000:.0f} ms an image, {cost / annotate_seconds:.2f}x the annotator's",
            )
        )
    return out


def cost_study(config: JobConfig, loaded: LoadedModel, sigmoid: bool, segset: Path, rounds: int = 7) -> dict:
    """What label maps add to a batch of the set's first eight images, in interleaved rounds (median): the
    annotator alone; the label maps of its maps and one RLE per class at each image's size (the step the job
    adds); the dense CRF on each image's canvas."""
    from camray.cam.label_maps import label_map_rles

    annotator = _annotator(config, loaded, sigmoid)
    rows = _manifest(segset)[:8]
    side = decode_side(config.tiling, annotator.input_size)
    listing = {"uri": np.array([uri for uri, _ in rows], dtype=object), "version": np.array([""] * len(rows))}
    decoded = read_decode_batch(listing, input_size=side, policy=config.model.resize, s3={}, limits={})
    pixels = torch.from_numpy(np.ascontiguousarray(decoded["pixels"]))
    valid_wh = torch.from_numpy(np.stack([decoded["valid_width"], decoded["valid_height"]], axis=1))
    ids = [_given_ids(labels, loaded.spec.categories, not sigmoid) for _, labels in rows]
    k = max(len(i) for i in ids)
    annotator.chosen = torch.tensor([i + [i[0]] * (k - len(i)) for i in ids])
    valid = torch.tensor([[slot < len(i) for slot in range(k)] for i in ids])
    sizes = list(zip(decoded["width"].tolist(), decoded["height"].tolist(), strict=True))
    canvases = [decoded["pixels"][i, :h, :w] for i, (w, h) in enumerate(valid_wh.tolist())]

    def annotate() -> Any:
        with torch.inference_mode():
            return annotator.annotate(pixels, valid_wh)

    out = annotate()  # warm-up
    times: dict[str, list[float]] = {"annotate": [], "label_maps": [], "crf": []}
    for _ in range(rounds):
        clock = time.perf_counter()
        out = annotate()
        times["annotate"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        grids = label_maps(out.maps, valid, 0.5).numpy()
        for grid, (width, height) in zip(grids, sizes, strict=True):
            label_map_rles(grid, k, width, height)
        times["label_maps"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        for maps, canvas in zip(out.maps.numpy(), canvases, strict=True):
            refiners.crf(maps, canvas, 0.5)
        times["crf"].append(time.perf_counter() - clock)
    median = {name: float(np.median(values)) / len(rows) for name, values in times.items()}
    return {
        **{f"{name}_ms": value * 1000 for name, value in median.items()},
        "label_maps_vs_annotate": median["label_maps"] / median["annotate"],
        "crf_vs_annotate": median["crf"] / median["annotate"],
    }


def ignore_band_study(items: list[ImageMaps], background: float) -> list[dict]:
    """The ignore band above `background`, on test: the share of scored pixels it leaves out and the accuracy of
    the pixels it labels."""
    out = []
    test = split(items, "test")
    print("| ignore_below | left out | pixel accuracy of the rest | mIoU of the rest | mIoU, band as a miss |")
    print("|---|---|---|---|---|")
    for above in (None, 0.1, 0.2, 0.3):
        ignore_below = None if above is None else round(background + above, 2)
        if ignore_below is not None and ignore_below > 1.0:
            continue
        report = score(test, lambda i, b=ignore_below: predicted_label_map(i, background, b))
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


# (label, preset, overrides): each preset as it is, and with its maps refined for every image: the confidence
# gate (`cam.plain_above_score`) keeps the plain map for the images a head is sure of, which a sigmoid head is of
# nearly every class it is given.
CONFIGURATIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("`fast`", "fast", {}),
    ("`balanced`", "balanced", {}),
    ("`balanced`, no gate", "balanced", {"cam.plain_above_score": None}),
    ("`balanced`, no gate, refine_power 1", "balanced", {"cam.plain_above_score": None, "cam.refine_power": 1.0}),
    ("`accurate`", "accurate", {}),
    ("`accurate`, no gate", "accurate", {"cam.plain_above_score": None}),
    ("`accurate`, no gate, refine_power 1", "accurate", {"cam.plain_above_score": None, "cam.refine_power": 1.0}),
)
DEFAULT_LABEL = "`balanced`, no gate, refine_power 1"
HEADER = "| configuration | mIoU test | mIoU all | mIoU photos | chosen on dev; cost |\n|---|---|---|---|---|"


def run(
    segset: Path,
    head_dir: Path,
    heads: list[str],
    crf: bool = True,
    only: list[str] | None = None,
    crf_scales: tuple[float, ...] = CRF_COLOUR_SCALES,
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
    for head in heads:
        for label, preset, overrides in CONFIGURATIONS:
            if head == "imagenet" and label not in ("`fast`", DEFAULT_LABEL):
                continue
            if only and not any(word in label for word in only):
                continue
            config = load_config(overrides={"sink.uri": "unused", **overrides}, preset=preset)
            if head == "trained":
                loaded, sigmoid, imagenet = load_head(head_dir / "head.pth", head_dir / "labels.txt"), True, False
            else:
                loaded, sigmoid, imagenet = load_model(config.model), False, True
            for given in (True, False):
                items, seconds = collect(config, loaded, sigmoid, imagenet, segset, given)
                threshold, dev = best_threshold(items)
                name = f"{label}, {head} head, {'given' if given else 'predicted'} classes"
                line = _line(
                    name,
                    items,
                    lambda i, t=threshold: predicted_label_map(i, t),
                    f"bg {threshold}; annotator {seconds * 1000:.0f} ms an image",
                )
                results["configurations"].append({**line, "dev": dev, "seconds": seconds, "background": threshold})
                if crf:
                    results["configurations"].append(crf_study(items, seconds, name, crf_scales))
                if head == "trained" and given and label == DEFAULT_LABEL:
                    results["per_class"] = per_class(items, lambda i, t=threshold: predicted_label_map(i, t))
                    results["filters"] = filter_study(items, seconds, name)
                    print(f"\nIgnore band, {name}, background {threshold}:")
                    results["ignore_band"] = ignore_band_study(items, threshold)
                    print(f"\n{HEADER}")
    if costs and "trained" in heads:
        print("\n| configuration | annotator ms an image | label maps + RLEs | dense CRF |\n|---|---|---|---|")
        loaded = load_head(head_dir / "head.pth", head_dir / "labels.txt")
        for label, preset, overrides in CONFIGURATIONS:
            if only and not any(word in label for word in only):
                continue
            config = load_config(overrides={"sink.uri": "unused", **overrides}, preset=preset)
            cost = cost_study(config, loaded, True, segset)
            results.setdefault("costs", {})[label] = cost
            print(
                f"| {label} | {cost['annotate_ms']:.1f} | {cost['label_maps_ms']:.1f} ms, "
                f"{cost['label_maps_vs_annotate']:.2f}x | {cost['crf_ms']:.0f} ms, {cost['crf_vs_annotate']:.1f}x |",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segset", default="data/segset", help="folder from `python -m camray.evaluation.segset`")
    parser.add_argument("--head", default="data/kinds_head", help="from `python -m camray.evaluation.kinds_head`")
    parser.add_argument("--heads", nargs="+", choices=["trained", "imagenet"], default=["trained", "imagenet"])
    parser.add_argument("--no-crf", action="store_true", help="skip the dense CRF (the slowest part)")
    parser.add_argument("--crf-scale", type=float, nargs="+", default=list(CRF_COLOUR_SCALES))
    parser.add_argument("--only", nargs="+", help="the configurations whose label holds one of these words")
    parser.add_argument("--no-costs", action="store_true", help="skip the timed rounds")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    results = run(
        Path(args.segset),
        Path(args.head),
        args.heads,
        crf=not args.no_crf,
        only=args.only,
        crf_scales=tuple(args.crf_scale),
        costs=not args.no_costs,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
