"""Image-level labels for the evaluation sets: each image's truth kinds as the labels a job is given.

A truth object has a kind (`Truth.box_kinds`: `cat`, `coffee`, `person`, `chair`, an ARC product, ...; the
segmentation set's class names, `camray.evaluation.segset.CLASSES`). An image's labels are its distinct kinds, as a
user who tagged it would list them, and how a kind becomes a class depends on the head:

- **a head trained on the kinds** (`camray.evaluation.kinds_head`): the kind is the class, given by name; the truth
  is re-targeted to the head's class ids (`truth_for_head`), so every object, people and products included, is
  scored by its own class;
- **ImageNet's head**: a kind accepts many ImageNet classes (any of five cat breeds is a cat; a person is what
  ImageNet sees of one, `segset.IMAGENET_KINDS`'s clothes). The image is given, for each of its kinds, the one
  class of the kind the head scores highest on the whole image (`imagenet_labels`): the name a user would pick for
  this photo, and one map an object. Giving all of a kind's classes instead maps one cat five times, each map
  boxing it, four boxes that count against precision (`--imagenet-labels all` measures it). A kind ImageNet has
  no class for (five of the ARC products) cannot be given; its objects keep the truth's class-agnostic scoring,
  so another label's box on them still counts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from camray.evaluation.evaluate import Truth
from camray.evaluation.segset import IMAGENET_KINDS

if TYPE_CHECKING:
    from camray.config import JobConfig

ImagenetRule = Literal["best", "all"]


def image_kinds(truth: dict[str, Truth]) -> dict[str, list[str]]:
    """Each image's distinct kinds, in the truth's order; a truth without kinds is refused."""
    kinds = {}
    for name, gt in truth.items():
        if len(gt.box_kinds) != len(gt.boxes):
            raise ValueError(f"truth of {name!r} has no `kind` column: rebuild it (camray.evaluation.scenes, evalset)")
        kinds[name] = list(dict.fromkeys(gt.box_kinds))
    return kinds


def head_scores(config: JobConfig, images: list[Path], batch_size: int = 16) -> dict[str, np.ndarray]:
    """float32[N]: the head's probability of each class for each image (by file name), the whole image at the
    model's input size, prepared as the annotator prepares it."""
    # Imported here: the scorer of a COCO export (`camray.evaluation.multi --labels`) loads no model.
    import torch

    from camray.annotator import Annotator
    from camray.image.decode import DecodeLimits
    from camray.models import resolve_setup
    from camray.reader import read_decode_batch

    loaded = resolve_setup(config.model)
    annotator = Annotator(loaded, config.cam, config.boxes, torch.device("cpu"))
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        listing = {"uri": np.array([str(p) for p in chunk], dtype=object), "version": np.array([""] * len(chunk))}
        decoded = read_decode_batch(
            listing,
            input_size=annotator.input_size,
            policy=config.model.resize,
            s3={},
            limits=DecodeLimits().__dict__,
        )
        pixels = torch.from_numpy(np.ascontiguousarray(decoded["pixels"]))
        valid_wh = torch.from_numpy(np.stack([decoded["valid_width"], decoded["valid_height"]], axis=1))
        with torch.inference_mode():
            probabilities = annotator.probabilities(annotator.extractor.module(annotator.prepare(pixels, valid_wh)))
        for path, row in zip(chunk, probabilities.numpy(), strict=True):
            out[path.name] = row
    return out


def imagenet_labels(
    truth: dict[str, Truth], scores: dict[str, np.ndarray] | None = None, rule: ImagenetRule = "best"
) -> dict[str, list[str]]:
    """ImageNet class ids (as decimal strings, as a manifest gives them) for each image's kinds: the kind's class
    the head scores highest on the image (`best`, which needs `scores`), or every class of the kind (`all`).

    A kind's classes are those its objects accept in the truth (the officer's uniform, any cat breed); for objects
    the truth scores class-agnostically, `segset.IMAGENET_KINDS`'s (a person's clothes, the socks). A kind without
    ImageNet classes gives none; an image left with none is left out."""
    labels: dict[str, list[str]] = {}
    for name, gt in truth.items():
        candidates: dict[str, set[int]] = {}
        for kind, classes in zip(gt.box_kinds, gt.box_classes, strict=True):
            candidates.setdefault(kind, set()).update(classes or IMAGENET_KINDS.get(kind, ()))
        ids: list[int] = []
        for kind in image_kinds({name: gt})[name]:
            classes = sorted(candidates[kind])
            if not classes:
                continue
            if rule == "all":
                ids.extend(classes)
            elif scores is None:
                raise ValueError("`best` needs the head's scores of each image")
            else:
                ids.append(max(classes, key=lambda c: float(scores[name][c])))
        if ids:
            labels[name] = [str(i) for i in dict.fromkeys(ids)]
    return labels


def truth_for_head(truth: dict[str, Truth], categories: tuple[str, ...] | list[str]) -> dict[str, Truth]:
    """The truth with each object's acceptable classes the head's class of its kind (`categories`, the head's
    class names in output order); an object whose kind the head lacks is scored class-agnostically."""
    index = {name: i for i, name in enumerate(categories)}
    out = {}
    for name, gt in truth.items():
        image_kinds({name: gt})  # refuses a truth without kinds
        box_classes = [{index[kind]} if kind in index else set() for kind in gt.box_kinds]
        classes = set().union(*box_classes) if box_classes else set()
        out[name] = replace(gt, box_classes=box_classes, classes=classes)
    return out


def trained_labels(kinds: dict[str, list[str]], categories: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """The kinds the head has, by name, for each image (an image left with none is left out)."""
    labels = {name: [kind for kind in image_kinds_ if kind in categories] for name, image_kinds_ in kinds.items()}
    return {name: names for name, names in labels.items() if names}
