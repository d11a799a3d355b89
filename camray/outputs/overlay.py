"""Drawing a class activation map over its photo, in the CAM lesson's look: the photo in grayscale, the map in
a six-stop colour ramp at 50% opacity, boxes with a legend `label (prob = 0.xxx)`; and a label map over its photo,
each class in its palette colour.

Pure image compute on numpy arrays and PIL images; nothing here reads files or knows the tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# The seed lesson's ramp, low to high activation, stops evenly spaced over [0, 1].
RAMP_STOPS = ("#000099", "#00FEFF", "#45FE4F", "#FCFF00", "#FF9400", "#FF3100")
OPACITY = 0.5
# Box outlines, one colour per box in order (matplotlib's tab10, which the lesson's plots used).
LEGEND_FONT_SIZE = 13  # pixels; the gallery shows its pictures at their own size
BOX_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    value = hex_colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def ramp(values: np.ndarray) -> np.ndarray:
    """values (float[H, W] in [0, 1]) -> uint8[H, W, 3], linearly interpolated between `RAMP_STOPS`."""
    stops = np.linspace(0.0, 1.0, len(RAMP_STOPS))
    colours = np.array([_rgb(stop) for stop in RAMP_STOPS], dtype=np.float64)
    clipped = np.clip(values.astype(np.float64), 0.0, 1.0)
    channels = [np.interp(clipped, stops, colours[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """heatmap (float[h, w], covering the whole image) -> float[height, width] for `size` = (width, height)."""
    image = Image.fromarray(heatmap.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(gray: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """gray (uint8[H, W]) with heatmap (float[h, w] in [0, 1]) resized over it -> uint8[H, W, 3]."""
    height, width = gray.shape
    colour = ramp(resize_map(heatmap, (width, height))).astype(np.float64)
    base = np.repeat(gray[..., None].astype(np.float64), 3, axis=-1)
    return np.round((1.0 - OPACITY) * base + OPACITY * colour).astype(np.uint8)


def label_overlay(gray: np.ndarray, labels: np.ndarray, palette: list[int]) -> np.ndarray:
    """gray (uint8[H, W]) with a label map (uint8[h, w], 0 background, 1..254 classes, 255 undecided) resized over
    it (nearest) -> uint8[H, W, 3]: each class's pixels in its `palette` colour (flat [r0, g0, b0, r1, ...]) at
    `OPACITY`, undecided ones in their colour too, background left as the photo."""
    height, width = gray.shape
    if labels.shape != (height, width):
        labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))
    colours = np.array(palette, dtype=np.float64).reshape(-1, 3)[labels]
    base = np.repeat(gray[..., None].astype(np.float64), 3, axis=-1)
    mixed = np.where((labels > 0)[..., None], (1.0 - OPACITY) * base + OPACITY * colours, base)
    return np.round(mixed).astype(np.uint8)


@dataclass(frozen=True)
class LabelledBox:
    """A box in original pixels (pixel-edge `x0, y0, x1, y1`) and the legend entry it gets."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    prob: float

    @property
    def legend(self) -> str:
        return f"{self.label} (prob = {self.prob:.3f})"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_boxes(image: Image.Image, boxes: list[LabelledBox], original_size: tuple[int, int]) -> Image.Image:
    """Draws `boxes` (original pixels of an `original_size` = (width, height) image) on `image`, scaled to its
    size, one colour per class, with a legend of the classes in the top-left corner; returns a new RGB image."""
    out = image.convert("RGB")
    if not boxes:
        return out
    legends = list(dict.fromkeys(box.legend for box in boxes))  # one entry per class, in the boxes' order
    colours = {legend: _rgb(BOX_COLOURS[i % len(BOX_COLOURS)]) for i, legend in enumerate(legends)}
    scale_x, scale_y = out.width / original_size[0], out.height / original_size[1]
    draw = ImageDraw.Draw(out, "RGBA")
    line = max(2, round(min(out.size) / 200))
    for box in boxes:
        corners = (box.x0 * scale_x, box.y0 * scale_y, box.x1 * scale_x - 1, box.y1 * scale_y - 1)
        draw.rectangle(corners, outline=colours[box.legend], width=line)
    font = _font(LEGEND_FONT_SIZE)
    row = max(draw.textbbox((0, 0), text, font=font)[3] for text in legends) + 4
    swatch, pad = row - 6, 5
    text_width = max(draw.textlength(text, font=font) for text in legends)
    draw.rectangle(
        (pad, pad, pad * 3 + swatch + text_width + 4, pad * 2 + row * len(legends)),
        fill=(255, 255, 255, 210),
        outline=(80, 80, 80, 255),
    )
    for index, text in enumerate(legends):
        top = pad * 2 + row * index
        draw.rectangle((pad * 2, top + 2, pad * 2 + swatch, top + 2 + swatch), outline=colours[text], width=2)
        draw.text((pad * 3 + swatch + 2, top), text, fill=(0, 0, 0, 255), font=font)
    return out
