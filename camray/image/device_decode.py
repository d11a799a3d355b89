"""JPEG bytes -> letterboxed canvases on the predictor's device, for `runtime.decode: device`.

On a GPU node the CPU decode of the read tasks becomes the ceiling well before the model does (a JPEG costs
a few milliseconds of a CPU core; an H100 classifies thousands of images a second). Here the predictor
decodes the whole batch with `torchvision.io.decode_jpeg(..., device="cuda")` (nvJPEG, batched), applies the
EXIF orientation and resizes on the device. The read tasks have already checked every header
(`camray.image.decode.probe_image`): size limits, format and orientation. Whatever the device cannot decode
(PNG and other formats, CMYK JPEG, or a stream nvJPEG rejects) goes through `camray.image.decode.decode_image` on
the CPU, the same code as `runtime.decode: cpu`, so the output differs only by resampling rounding.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from camray.image.decode import DecodedImage, DecodeError, DecodeLimits, ResizePolicy, decode_image, fit_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanvasBatch:
    """Decoded canvases on the device, and why the others failed.

    pixels (Tensor[M, S, S, 3], uint8): one canvas per decoded image, in the order of `decoded`.
    valid_wh (Tensor[M, 2]): the valid region of each canvas (CPU).
    decoded (list[int]): positions (into the input lists) of the images in `pixels`.
    failed (dict[int, DecodeError]): positions that could not be decoded at all.
    """

    pixels: Tensor
    valid_wh: Tensor
    decoded: list[int]
    failed: dict[int, DecodeError]


def orient(image: Tensor, orientation: int) -> Tensor:
    """Applies an EXIF orientation (1-8) to a (C, H, W) image, as `PIL.ImageOps.exif_transpose` does."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.rot90(1, dims=(-2, -1))
    return image


def _decode_jpegs(encoded: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """Batched JPEG decode; nvJPEG fails a whole batch for one bad stream, so a failure retries one by one."""
    with warnings.catch_warnings():
        # torchvision 0.29 flags its image codecs as deprecated in favour of TorchCodec; nvJPEG is the same.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[Tensor | None] = []
            for data in encoded:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


# Pixels of the decoded images resized together in one call (as float32, 12 bytes a pixel: 768 MiB).
RESIZE_PIXELS_PER_CALL = 64 * 2**20


def _fit(
    images: Tensor,
    size: int,
    policy: ResizePolicy,
    canvases: Tensor,
    interpolation: str = "bilinear",
) -> tuple[int, int]:
    """Resizes (G, 3, H, W) uint8 images of one size into the top-left of `canvases` (G, S, S, 3); returns the
    valid (w, h)."""
    height, width = images.shape[-2:]
    target_w, target_h = fit_size(width, height, size, policy)
    # Antialiased, like PIL's resize in the CPU path: downscaling a large photo averages its pixels. Bicubic where
    # the model asks for it (PIL's other filters have no antialiased torch twin: bilinear stands in).
    mode = "bicubic" if interpolation == "bicubic" else "bilinear"
    resized = F.interpolate(images.float(), size=(target_h, target_w), mode=mode, antialias=True, align_corners=False)
    canvases[:, :target_h, :target_w] = resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return target_w, target_h


def _fit_by_size(
    images: dict[int, Tensor], size: int, policy: ResizePolicy, pixels: Tensor, interpolation: str
) -> dict[int, tuple[int, int]]:
    """Resizes each position's (3, H, W) image into `pixels[position]`; returns each position's valid (w, h).

    Images of the same size are resized in one call (a batch from one camera, or of resized copies, is a few
    calls, not one per image: each call is a handful of kernel launches); the results are the same bit for bit,
    since every image of a call is resized on its own."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, image in images.items():
        by_shape.setdefault(tuple(image.shape), []).append(position)
    valid: dict[int, tuple[int, int]] = {}
    for shape, positions in by_shape.items():
        per_call = max(1, RESIZE_PIXELS_PER_CALL // (shape[-1] * shape[-2]))
        for start in range(0, len(positions), per_call):
            chunk = positions[start : start + per_call]
            canvases = torch.zeros((len(chunk), size, size, 3), dtype=torch.uint8, device=pixels.device)
            fitted = _fit(torch.stack([images[p] for p in chunk]), size, policy, canvases, interpolation)
            pixels[torch.tensor(chunk, device=pixels.device)] = canvases
            valid.update(dict.fromkeys(chunk, fitted))
    return valid


def decode_to_canvases(
    encoded: list[bytes],
    orientations: list[int],
    on_device: list[bool],
    size: int,
    policy: ResizePolicy,
    device: torch.device,
    limits: DecodeLimits | None = None,
    interpolation: str = "bilinear",
) -> CanvasBatch:
    """Decodes a batch: entries with `on_device` on the device, the rest (and device failures) on the CPU."""
    n = len(encoded)
    pixels = torch.zeros((n, size, size, 3), dtype=torch.uint8, device=device)
    valid = torch.zeros((n, 2), dtype=torch.int64)
    done = np.zeros(n, dtype=bool)
    failed: dict[int, DecodeError] = {}

    jpeg_positions = [i for i in range(n) if on_device[i]]
    if jpeg_positions:
        streams = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in jpeg_positions]
        images = {
            position: orient(image, orientations[position])
            for position, image in zip(jpeg_positions, _decode_jpegs(streams, device), strict=True)
            if image is not None  # left for the CPU decoder, which reports the reason if it fails too
        }
        for position, fitted in _fit_by_size(images, size, policy, pixels, interpolation).items():
            valid[position] = torch.tensor(fitted)
            done[position] = True
    for position in np.flatnonzero(~done):
        result = decode_image(encoded[position], size, policy, limits or DecodeLimits(), interpolation)
        if isinstance(result, DecodeError):
            failed[int(position)] = result
            continue
        assert isinstance(result, DecodedImage)
        pixels[position] = torch.from_numpy(result.pixels).to(device)
        valid[position] = torch.tensor([result.valid_width, result.valid_height])
        done[position] = True
    decoded = np.flatnonzero(done).tolist()
    index = torch.tensor(decoded, dtype=torch.int64)
    return CanvasBatch(pixels[index.to(device)], valid[index], decoded, failed)


class DeviceLoader:
    """Brings batches onto the device on a CUDA stream of its own, one batch at a time: decoding JPEG bytes there
    (`decode_to_canvases`) or copying decoded canvases up. A thread loading batch n+1 here runs beside another
    computing batch n on its own stream, so a loaded device does both at the pace of the slower.

    What `decode` and `upload` return is complete when they return (they wait for this stream; nvJPEG waits for
    its own anyway), so any stream may read it: the reader calls `record_stream` on it (PyTorch's allocator
    then keeps its memory from this stream's next batches until that reader is done). On the CPU it loads in
    the calling thread, with no streams.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._lock = threading.Lock()

    def decode(
        self,
        encoded: list[bytes],
        orientations: list[int],
        on_device: list[bool],
        size: int,
        policy: ResizePolicy,
        limits: DecodeLimits | None = None,
        interpolation: str = "bilinear",
    ) -> CanvasBatch:
        """`decode_to_canvases` on this loader's stream."""
        with self._lock:
            if self.stream is None:
                return decode_to_canvases(
                    encoded, orientations, on_device, size, policy, self.device, limits, interpolation
                )
            with torch.cuda.stream(self.stream):
                canvases = decode_to_canvases(
                    encoded, orientations, on_device, size, policy, self.device, limits, interpolation
                )
            self.stream.synchronize()
            return canvases

    def upload(self, pixels: Tensor) -> Tensor:
        """`pixels` (host memory, pinned for an asynchronous copy) on the device."""
        with self._lock:
            if self.stream is None:
                return pixels.to(self.device)
            with torch.cuda.stream(self.stream):
                on_device = pixels.to(self.device, non_blocking=True)
            self.stream.synchronize()
            return on_device

    def hand_over(self, tensor: Tensor) -> Tensor:
        """`tensor` (loaded here) made safe to read on the calling thread's current stream."""
        if self.stream is not None and tensor.device.type == "cuda":
            tensor.record_stream(torch.cuda.current_stream(self.device))
        return tensor
