"""Builds the multi-object evaluation set: scenes of 2-3 different hand-boxed objects, plus the annotated photos.

The scenes reuse the evaluation set's parts (`camray.evaluation.evalset`): its hand-boxed object crops (cat, coffee,
motorbike, rocket, officer) with their acceptable ImageNet classes, its texture photos and canvas shapes. Each scene
pastes two or three different objects, apart (no two boxes overlap), at scales from a fifth to half of the canvas's
shorter side. The annotated VOC and ARC photos of the evaluation set join them, with every object boxed by their
annotators (classes without an ImageNet counterpart are scored class-agnostically, as there).

`python -m camray.evaluation.scenes OUT_DIR` writes `OUT_DIR/images/*.png` and `OUT_DIR/truth.csv` in the evaluation
set's CSV format (`file,x0,y0,x1,y1,class_id,kind`, one row per object). Scenes are named `scene_*`, photos `photo_*`.
Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from camray.evaluation.evalset import CANVASES, OBJECTS, TEXTURES, TruthRow, _texture, photo_rows, write_truth
from camray.samples import sample_photos

SCENES_PER_TEXTURE = 6
SCALE_RANGE = (0.2, 0.5)  # an object's longer side over the canvas's shorter side
GAP = 4  # pixels kept free between pasted objects, so no two boxes touch
PLACEMENT_TRIES = 200


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + GAP and b[0] < x1 + GAP and y0 < b[3] + GAP and b[1] < y1 + GAP for b in placed)


def _place(
    rng: np.random.Generator, sizes: list[tuple[int, int]], width: int, height: int
) -> list[tuple[int, int, int, int]] | None:
    """Top-left corners for objects of `sizes`, none overlapping another; None if random tries find none."""
    placed: list[tuple[int, int, int, int]] = []
    for obj_w, obj_h in sizes:
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, width - obj_w + 1))
            y0 = int(rng.integers(0, height - obj_h + 1))
            box = (x0, y0, x0 + obj_w, y0 + obj_h)
            if not _overlaps(box, placed):
                placed.append(box)
                break
        else:
            return None
    return placed


def scene_rows(out: Path, seed: int, per_texture: int = SCENES_PER_TEXTURE) -> list[TruthRow]:
    """Writes `per_texture` scenes a texture under `out/images`; returns their truth rows."""
    photos = sample_photos()
    crops = {name: Image.open(photos[item.photo]).convert("RGB").crop(item.box) for name, item in OBJECTS.items()}
    names = sorted(OBJECTS)
    rng = np.random.default_rng(seed)
    rows: list[TruthRow] = []
    for t_index, texture_name in enumerate(TEXTURES):
        for s_index in range(per_texture):
            width, height = CANVASES[(t_index + s_index) % len(CANVASES)]
            count = 2 + (s_index % 2)
            chosen = [names[i] for i in rng.choice(len(names), size=count, replace=False)]
            scales = rng.uniform(*SCALE_RANGE, size=count)
            while True:  # shrink all objects a little until they fit apart
                objects = []
                for name, scale in zip(chosen, scales, strict=True):
                    crop = crops[name]
                    factor = scale * min(width, height) / max(crop.size)
                    objects.append((name, max(1, round(crop.width * factor)), max(1, round(crop.height * factor))))
                placed = _place(rng, [(w, h) for _, w, h in objects], width, height)
                if placed is not None:
                    break
                scales = scales * 0.9
            canvas = _texture(texture_name, (width, height))
            file = f"scene_{Path(texture_name).stem}_{s_index}.png"
            for (name, obj_w, obj_h), (x0, y0, x1, y1) in zip(objects, placed, strict=True):
                obj = crops[name].resize((obj_w, obj_h), Image.Resampling.LANCZOS)
                if rng.random() < 0.5:
                    obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                canvas.paste(obj, (x0, y0))
                item = OBJECTS[name]
                rows.append((file, x0, y0, x1, y1, " ".join(map(str, item.classes)), item.kind))
            canvas.save(out / "images" / file)
    return rows


def build(out_dir: str | Path, seed: int = 2026, per_texture: int = SCENES_PER_TEXTURE) -> Path:
    """Writes the scenes, the annotated photos and `truth.csv`; returns the CSV path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    return write_truth(out, [*scene_rows(out, seed, per_texture), *photo_rows(out / "images")])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", default="data/scenes")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    print(build(args.out_dir, args.seed))
