"""Bytes -> RGB pixels at the model's input size, with the original size and the letterbox geometry.

Everything here is pure: no Ray, no S3. Failures are returned as values (`DecodeError`) so one bad file
becomes one error row instead of a failed task.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ResizePolicy = Literal["squash", "letterbox"]


@dataclass(frozen=True)
class DecodeLimits:
    """Guards against decompression bombs and absurd inputs."""

    max_pixels: int = 100_000_000
    max_bytes: int = 200 * 1024 * 1024


@dataclass(frozen=True)
class DecodedImage:
    """An image resized into a `size` x `size` canvas, top-left aligned.

    `pixels (uint8[size, size, 3])`: RGB; outside `valid_height` x `valid_width` (letterbox) it is zero and
    the predictor fills it with the normalisation mean. `width` and `height` are the original pixel size after
    EXIF orientation: the valid region is exactly the whole original image, so a point (x, y) of the canvas
    maps to (x * width / valid_width, y * height / valid_height) in the original.
    """

    pixels: np.ndarray
    width: int
    height: int
    valid_width: int
    valid_height: int


@dataclass(frozen=True)
class DecodeError:
    error_type: str
    message: str


def fit_size(width: int, height: int, size: int, policy: ResizePolicy) -> tuple[int, int]:
    """The (width, height) the whole image takes inside a `size` x `size` canvas."""
    if policy == "squash":
        return size, size
    scale = size / max(width, height)
    return max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


@dataclass(frozen=True)
class ProbedImage:
    """What the header says, before any pixel is decoded. `width` and `height` are after EXIF orientation."""

    format: str
    mode: str
    width: int
    height: int
    orientation: int

    @property
    def jpeg_rgb_or_gray(self) -> bool:
        """Decodable by `torchvision.io.decode_jpeg` on a GPU (nvJPEG): baseline/progressive YCbCr or gray."""
        return self.format == "JPEG" and self.mode in ("RGB", "L")


# EXIF orientations 5-8 store the image transposed: width and height swap.
_SWAPS_AXES = (5, 6, 7, 8)


def _open(data: bytes, limits: DecodeLimits) -> tuple[Image.Image, ProbedImage] | DecodeError:
    """Opens `data` lazily (header only) and applies the byte and pixel limits."""
    if not data:
        return DecodeError("EmptyFile", "the file has 0 bytes")
    if len(data) > limits.max_bytes:
        return DecodeError("FileTooLarge", f"{len(data)} bytes exceeds the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # PIL warns before it raises on bombs; the raise below is what we report.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                return DecodeError("ImageTooLarge", f"{width}x{height} pixels exceeds the limit of {limits.max_pixels}")
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return DecodeError(type(exc).__name__, str(exc))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return DecodeError(type(exc).__name__, str(exc) or "corrupt image header")
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return image, ProbedImage(image.format or "", image.mode, width, height, int(orientation))


def probe_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> ProbedImage | DecodeError:
    """The header checks of `decode_image` without decoding: format, mode, size and orientation, or why not."""
    opened = _open(data, limits)
    return opened if isinstance(opened, DecodeError) else opened[1]


# The resampling filters a model's preprocessing may name (timm's `pretrained_cfg["interpolation"]`); any other
# name (timm's "random", meant for training) resizes bilinearly.
PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode_image(
    data: bytes,
    size: int,
    policy: ResizePolicy,
    limits: DecodeLimits = DecodeLimits(),
    interpolation: str = "bilinear",
) -> DecodedImage | DecodeError:
    """Decodes `data` into a `DecodedImage`, resized with the model's `interpolation`, or says why it cannot."""
    opened = _open(data, limits)
    if isinstance(opened, DecodeError):
        return opened
    image, probe = opened
    target_w, target_h = fit_size(probe.width, probe.height, size, policy)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # JPEG can decode straight at 1/2, 1/4 or 1/8 scale: a 12-megapixel photo then costs little
            # more than a small one. The whole image stays in view, so the mapping above stays exact.
            if probe.orientation in _SWAPS_AXES:
                image.draft("RGB", (target_h, target_w))
            else:
                image.draft("RGB", (target_w, target_h))
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
            resample = PIL_FILTERS.get(interpolation, Image.Resampling.BILINEAR)
            resized = image.resize((target_w, target_h), resample, reducing_gap=None)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return DecodeError(type(exc).__name__, str(exc))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Truncated and corrupt streams surface as OSError/SyntaxError/EOFError from the codecs.
        return DecodeError(type(exc).__name__, str(exc) or "corrupt image data")
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:target_h, :target_w] = np.asarray(resized, dtype=np.uint8)
    return DecodedImage(canvas, probe.width, probe.height, target_w, target_h)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Converts grayscale, CMYK, palette, 16-bit and alpha images to 8-bit RGB (alpha composited on white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max()) if array.size else 0.0
        # 16-bit data spans 0..65535; 32-bit integer images use whatever range they like.
        if image.mode.startswith("I;16") or 255 < peak <= 65535:
            full_scale = 65535.0
        else:
            full_scale = max(peak, 255.0)
        scaled = np.clip(array * (255.0 / full_scale), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    return image.convert("RGB")
