"""mIoU of label maps against truth: a job's mask export, or any folder of indexed PNGs, scored on your own set.

`python -m camray.evaluation.segmentation --pred DIR --truth DIR [--names FILE.json] [--unscored CLASS ...]
[--json OUT]`

Both folders hold indexed PNGs (`camray.outputs.label_png`: 0 background, k the class on line k of the folder's
`classes.txt`, 255 ignore) and their `classes.txt`; for a `camray export masks` folder, its `SegmentationClass/`
holds the PNGs. Classes are matched by name, so the two folders may number them differently; `--names` maps the
prediction's class names onto the truth's (a JSON object, several names onto one: an ImageNet head's cat breeds
onto `cat`), and `--unscored` leaves truth classes the prediction cannot name out of the score (their pixels
count as ignored). Images are matched by their path under the folder, else by file name (`camray export masks`
lays files out under the inputs' common folder, truth sets are often flat); a truth image with no prediction
counts as all background (`missing` says how many).

Measures, over every scored pixel of the set (truth 255 is not scored), as PASCAL VOC and MMSegmentation count
them: one confusion matrix for the whole set, then per class IoU = TP / (TP + FP + FN); `miou` is the mean over
the classes present in the truth or the predictions, background included. A predicted 255 (an ignore band) labels
nothing: it is a miss for the truth's class and a hit for none. So that a pseudo-label set with an ignore band can
be judged as its users train on it, `labelled` is the share of scored pixels the prediction labels and
`miou_labelled` the mIoU over those pixels only.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from camray.cam.label_maps import IGNORE
from camray.outputs.label_png import CLASSES_FILE, read_classes, read_label_png
from camray.outputs.mask_export import PNG_FOLDER

BACKGROUND_NAME = "background"


@dataclass(frozen=True)
class ClassScore:
    iou: float | None  # None where the class is in neither the truth nor the predictions
    truth_pixels: int
    predicted_pixels: int


@dataclass(frozen=True)
class SegmentationReport:
    images: int
    missing: int
    miou: float
    pixel_accuracy: float
    labelled: float
    miou_labelled: float
    classes: dict[str, ClassScore] = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            f"images {self.images} ({self.missing} without a prediction, scored as background)",
            f"mIoU {self.miou:.3f} (background included), pixel accuracy {self.pixel_accuracy:.3f}",
            f"labelled {self.labelled:.3f} of the scored pixels; mIoU on them {self.miou_labelled:.3f}",
            "",
            f"{'class':<28} {'IoU':>6} {'truth px':>12} {'predicted px':>13}",
        ]
        for name, score in self.classes.items():
            iou = "-" if score.iou is None else f"{score.iou:.3f}"
            lines.append(f"{name:<28} {iou:>6} {score.truth_pixels:>12} {score.predicted_pixels:>13}")
        return "\n".join(lines)


def _miou(matrix: np.ndarray) -> tuple[float, list[float | None]]:
    """(mIoU, per-class IoU) of a confusion matrix [truth class, predicted class (+ extra columns that are no
    class: misses)]; classes with no pixel either way are left out (None)."""
    n = matrix.shape[0]
    tp = np.diag(matrix[:, :n]).astype(np.float64)
    union = matrix.sum(axis=1) + matrix[:, :n].sum(axis=0) - tp
    ious = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [iou for iou in ious if iou is not None]
    return (float(np.mean(present)) if present else math.nan), ious


class Confusion:
    """Accumulates one confusion matrix over a set. Label maps hold indices into `names` (`names[0]` is the
    background), or `IGNORE`."""

    def __init__(self, names: list[str]) -> None:
        if len(names) >= IGNORE:
            raise ValueError(f"at most {IGNORE - 1} classes with background, got {len(names)}")
        self.names = list(names)
        n = len(names)
        # Rows: truth class; columns: predicted class, then a last column for a predicted IGNORE.
        self.matrix = np.zeros((n, n + 1), dtype=np.int64)
        self.images = 0
        self.missing = 0

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        """truth (int[H, W]), pred (int[H, W]): class indices or `IGNORE`."""
        if truth.shape != pred.shape:
            raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in size")
        n = len(self.names)
        scored = truth != IGNORE
        t = truth[scored].astype(np.int64)
        p = pred[scored].astype(np.int64)
        p = np.where(p == IGNORE, n, p)
        if t.size and (t.max() >= n or p.max() > n):
            raise ValueError(f"a label map holds a value outside its {n} classes")
        self.matrix += np.bincount(t * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)
        self.images += 1

    def report(self) -> SegmentationReport:
        n = len(self.names)
        labelled = self.matrix[:, :n]
        miou, ious = _miou(self.matrix)  # a predicted IGNORE is in its truth class's row, no class's column
        miou_labelled, _ = _miou(labelled)
        total = int(self.matrix.sum())
        return SegmentationReport(
            images=self.images,
            missing=self.missing,
            miou=miou,
            pixel_accuracy=float(np.trace(labelled) / max(total, 1)),
            labelled=float(labelled.sum() / max(total, 1)),
            miou_labelled=miou_labelled,
            classes={
                name: ClassScore(ious[i], int(self.matrix[i].sum()), int(labelled[:, i].sum()))
                for i, name in enumerate(self.names)
            },
        )


def _pngs(folder: Path) -> dict[str, Path]:
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*.png"))}


def _value_lookup(
    folder: Path, names: list[str], renamed: dict[str, str] | None = None, unscored: Sequence[str] = ()
) -> np.ndarray:
    """(256,) the class index in `names` of each pixel value of `folder`'s PNGs (its class named through `renamed`;
    IGNORE for an `unscored` class); -1 where classes.txt has none."""
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[0], lookup[IGNORE] = 0, IGNORE
    for value, name in read_classes(folder / CLASSES_FILE).items():
        name = (renamed or {}).get(name, name)
        lookup[value] = IGNORE if name in unscored else names.index(name)
    return lookup


def _indices(path: Path, lookup: np.ndarray) -> np.ndarray:
    values = read_label_png(path)
    out = lookup[values]
    if (out < 0).any():
        bad = sorted(set(values[out < 0].tolist()))
        raise ValueError(f"{path}: values {bad} are not classes of its {CLASSES_FILE}")
    return out


def score_folders(
    pred_dir: str | Path,
    truth_dir: str | Path,
    pred_names: dict[str, str] | None = None,
    unscored: Sequence[str] = (),
) -> SegmentationReport:
    """Scores every truth PNG under `truth_dir` against its prediction under `pred_dir` (module docstring):
    `pred_names` maps prediction class names to the truth's, `unscored` truth classes are ignored."""
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for folder in (pred_dir, truth_dir):
        if not (folder / CLASSES_FILE).is_file():
            raise FileNotFoundError(f"{folder} has no {CLASSES_FILE} naming its label values")
    truth_names = [n for n in read_classes(truth_dir / CLASSES_FILE).values() if n not in unscored]
    renamed = [(pred_names or {}).get(n, n) for n in read_classes(pred_dir / CLASSES_FILE).values()]
    pred_only = list(dict.fromkeys(n for n in renamed if n not in truth_names and n not in unscored))
    names = [BACKGROUND_NAME, *[n for n in truth_names + pred_only if n != BACKGROUND_NAME]]
    truth_lookup = _value_lookup(truth_dir, names, unscored=unscored)
    pred_lookup = _value_lookup(pred_dir, names, pred_names, unscored)
    if (pred_dir / PNG_FOLDER).is_dir():  # a `camray export masks` folder: its PNGs are under this
        pred_dir = pred_dir / PNG_FOLDER
    predictions = _pngs(pred_dir)
    by_name: dict[str, list[Path]] = {}
    for path in predictions.values():
        by_name.setdefault(path.name, []).append(path)
    truths = _pngs(truth_dir)
    if not truths:
        raise FileNotFoundError(f"{truth_dir} holds no PNG label maps")
    confusion = Confusion(names)
    for relative, truth_path in truths.items():
        truth = _indices(truth_path, truth_lookup)
        pred_path = predictions.get(relative)
        if pred_path is None:
            same_name = by_name.get(truth_path.name, [])
            if len(same_name) > 1:
                raise ValueError(f"{truth_path.name}: {len(same_name)} predictions bear this name, none at {relative}")
            pred_path = same_name[0] if same_name else None
        if pred_path is None:
            confusion.missing += 1
            confusion.add(truth, np.zeros_like(truth))
            continue
        pred = _indices(pred_path, pred_lookup)
        if pred.shape != truth.shape:
            size, truth_size = f"{pred.shape[1]}x{pred.shape[0]}", f"{truth.shape[1]}x{truth.shape[0]}"
            raise ValueError(f"{pred_path}: {size} pixels, its truth {truth_size}")
        confusion.add(truth, pred)
    return confusion.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="folder of predicted label maps and their classes.txt")
    parser.add_argument("--truth", required=True, help="folder of truth label maps and their classes.txt")
    parser.add_argument("--names", help="JSON object mapping the prediction's class names onto the truth's")
    parser.add_argument("--unscored", nargs="+", default=[], metavar="CLASS", help="truth classes left unscored")
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    try:
        names = json.loads(Path(args.names).read_text()) if args.names else None
        report = score_folders(args.pred, args.truth, names, args.unscored)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
