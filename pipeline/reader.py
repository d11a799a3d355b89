"""The read + decode stage: a batch of listed URIs -> decoded canvases, or error rows saying why not."""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any

import numpy as np

from pipeline.decode import DecodedImage, DecodeError, DecodeLimits, ResizePolicy, decode_image
from pipeline.sources import ByteReader, S3Settings

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _reader(s3: S3Settings) -> ByteReader:
    """One filesystem client per worker process and endpoint, reused across the tasks it runs."""
    return ByteReader(s3)


def read_decode_batch(
    batch: dict[str, np.ndarray],
    *,
    input_size: int,
    policy: ResizePolicy,
    s3: dict[str, Any],
    limits: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Ray Data task: listing rows (`uri`, `version`) -> decoded rows; failures become error columns."""
    reader = _reader(S3Settings(**s3))
    decode_limits = DecodeLimits(**limits)
    n = len(batch["uri"])
    out: dict[str, Any] = {
        "image_uri": batch["uri"].astype(object),
        "source_version": batch["version"].astype(object),
        "content_sha256": np.full(n, "", dtype=object),
        "width": np.zeros(n, dtype=np.int32),
        "height": np.zeros(n, dtype=np.int32),
        "valid_width": np.zeros(n, dtype=np.int32),
        "valid_height": np.zeros(n, dtype=np.int32),
        "pixels": np.zeros((n, input_size, input_size, 3), dtype=np.uint8),
        "error_stage": np.full(n, "", dtype=object),
        "error_type": np.full(n, "", dtype=object),
        "error_message": np.full(n, "", dtype=object),
    }
    for i, uri in enumerate(batch["uri"]):
        try:
            data = reader.read(str(uri))
        except Exception as exc:  # missing object, permissions, network: the image's error, not the job's
            out["error_stage"][i], out["error_type"][i], out["error_message"][i] = (
                "read",
                type(exc).__name__,
                str(exc),
            )
            continue
        out["content_sha256"][i] = hashlib.sha256(data).hexdigest()
        decoded = decode_image(data, input_size, policy, decode_limits)
        if isinstance(decoded, DecodeError):
            out["error_stage"][i], out["error_type"][i], out["error_message"][i] = (
                "decode",
                decoded.error_type,
                decoded.message,
            )
            continue
        assert isinstance(decoded, DecodedImage)
        out["width"][i], out["height"][i] = decoded.width, decoded.height
        out["valid_width"][i], out["valid_height"][i] = decoded.valid_width, decoded.valid_height
        out["pixels"][i] = decoded.pixels
    return out
