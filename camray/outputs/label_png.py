"""Label maps as files: indexed PNGs with PASCAL VOC's palette, and the `classes.txt` that names their values.

The layout VOC-style segmentation tools read (torchvision's `VOCSegmentation`, MMSegmentation): one mode `P` PNG
per image, pixel value 0 background, k (1..N) the class on line k of `classes.txt`, 255 ignore (VOC's void),
coloured by VOC's palette. A `classes.txt` written the other common way, background on its first line
(`background`, `_background_`, `__background__`), is read too: then line k + 1 names value k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES_FILE = "classes.txt"
BACKGROUND_NAMES = ("background", "_background_", "__background__")
IGNORE = 255  # VOC's void: the value a segmenter's loss skips
MAX_CLASSES = 254  # the values left between background (0) and IGNORE


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette (its devkit's `labelcolormap`: the bits of each index spread over R, G
    and B, high bits first), flat [r0, g0, b0, r1, ...]; 255, the void colour, is (224, 224, 192)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((r, g, b))
    return palette


def write_label_png(path: str | Path, label_map: np.ndarray) -> None:
    """uint8[H, W] -> an indexed PNG with VOC's palette at `path` (its folder is created)."""
    if label_map.dtype != np.uint8 or label_map.ndim != 2:
        raise ValueError(f"a label map is uint8 (H, W), got {label_map.dtype} {label_map.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label_map, mode="P")
    image.putpalette(voc_palette())
    image.save(path, optimize=True)


def read_label_png(path: str | Path) -> np.ndarray:
    """An indexed (mode `P`) or greyscale (`L`) PNG -> uint8[H, W] of its values (palette indices, not colours)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(
                f"{path}: a label map must be an indexed (P) or greyscale (L) PNG of class values, is mode {image.mode}"
            )
        return np.asarray(image, dtype=np.uint8).copy()


def write_classes(folder: str | Path, names: list[str] | tuple[str, ...]) -> Path:
    """`folder/classes.txt`: one class name a line, line k naming value k."""
    for name in names:
        if not name.strip() or "\n" in name or name != name.strip():
            raise ValueError(f"class name {name!r} cannot be a line of {CLASSES_FILE}")
    path = Path(folder) / CLASSES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names))
    return path


def read_classes(path: str | Path) -> dict[int, str]:
    """A `classes.txt` -> {value: class name} for values 1..N (see the module docstring for its two layouts)."""
    names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if names and names[0].lower() in BACKGROUND_NAMES:
        names = names[1:]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: a class is named twice")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{path}: {len(names)} classes, more than an indexed PNG holds besides 0 and 255")
    return {value: name for value, name in enumerate(names, start=1)}
