"""The read + decode stage: a batch of listed URIs -> decoded canvases, or error rows saying why not.

With `decode="device"` the stage reads and checks headers only, and hands the bytes on for the predictor to
decode on its device (`camray.image.device_decode`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from camray.image.decode import (
    DecodedImage,
    DecodeError,
    DecodeLimits,
    ProbedImage,
    ResizePolicy,
    decode_image,
    probe_image,
)
from camray.io.s3 import StoreUnavailableError
from camray.io.sources import ByteReader, S3Settings, filesystem_for, is_s3

logger = logging.getLogger(__name__)

# What the readers serve. A manifest may list anything; an entry they cannot serve is that image's error.
READABLE_SCHEMES = ("file", "s3")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@functools.lru_cache(maxsize=4)
def _reader(s3: S3Settings) -> ByteReader:
    """One filesystem client per worker process and endpoint, reused across the tasks it runs."""
    return ByteReader(s3)


def check_readable(uri: str) -> None:
    """Raises, with a message saying why, for a URI that is no readable image: a scheme other than a local path,
    `file://` or `s3://`, or a local path that is missing or no regular file. A FIFO would block the read and
    a device (`/dev/zero`) never end it, so only regular files are opened."""
    match = _SCHEME.match(uri)
    if match and match.group(1) not in READABLE_SCHEMES:
        raise ValueError(
            f"unsupported scheme `{match.group(1)}://` in {uri}: inputs are local paths, file:// or s3:// URIs"
        )
    if is_s3(uri):
        return
    path = Path(uri.removeprefix("file://")).expanduser()
    mode = os.stat(path).st_mode  # FileNotFoundError for a missing file, a dangling link, a missing folder
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{uri} is a directory, not an image file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{uri} is not a regular file (a FIFO, socket or device) and is not read")


def read_decode_batch(
    batch: dict[str, np.ndarray],
    *,
    input_size: int,
    policy: ResizePolicy,
    s3: dict[str, Any],
    limits: dict[str, Any],
    decode: str = "cpu",
    interpolation: str = "bilinear",
) -> dict[str, np.ndarray]:
    """Ray Data task: listing rows (`uri`, `version`, optionally `labels`) -> decoded rows; failures become error
    columns. `labels` (each row's label tokens, or None where the input carries none) pass through untouched, for
    the predictor to resolve.

    `decode="cpu"` fills `pixels`, `valid_width`, `valid_height`; `decode="device"` fills `encoded` (the bytes),
    `orientation` and `device_jpeg` (whether the device decoder can take it) instead. `io_retries` is how many
    times each read was retried; it rides with the row to the sink, which counts the run's retries.

    Raises `StoreUnavailableError` when the store fails a read after every attempt: an outage is the run's
    failure, and turning it into an error row per image would record a run that read nothing as succeeded. Only
    what the store or the file says of one input (`OSError`, `ValueError`: missing, forbidden, not a regular file,
    a scheme no reader serves) becomes its error row; any other exception is camray's and raises.
    """
    reader = _reader(S3Settings(**s3))
    decode_limits = DecodeLimits(**limits)
    n = len(batch["uri"])
    out: dict[str, Any] = {
        "image_uri": batch["uri"].astype(object),
        "source_version": batch["version"].astype(object),
        "content_sha256": np.full(n, "", dtype=object),
        "width": np.zeros(n, dtype=np.int32),
        "height": np.zeros(n, dtype=np.int32),
        "error_stage": np.full(n, "", dtype=object),
        "error_type": np.full(n, "", dtype=object),
        "error_message": np.full(n, "", dtype=object),
        "io_retries": np.zeros(n, dtype=np.int64),
        "labels": _labels_column(batch.get("labels"), n),
    }
    if decode == "device":
        out["encoded"] = np.full(n, b"", dtype=object)
        out["orientation"] = np.ones(n, dtype=np.int8)
        out["device_jpeg"] = np.zeros(n, dtype=bool)
    else:
        out["valid_width"] = np.zeros(n, dtype=np.int32)
        out["valid_height"] = np.zeros(n, dtype=np.int32)
        out["pixels"] = np.zeros((n, input_size, input_size, 3), dtype=np.uint8)
    for i, uri in enumerate(batch["uri"]):
        retries_before = reader.retries
        try:
            check_readable(str(uri))
            data = reader.read(str(uri))
        except StoreUnavailableError:
            raise
        # Missing, forbidden, no regular file, a URI no reader serves: the image's error. Anything else is a fault
        # of camray's own reading code, the same for every image: the run's.
        except (OSError, ValueError) as exc:
            out["error_stage"][i], out["error_type"][i], out["error_message"][i] = (
                "read",
                type(exc).__name__,
                str(exc),
            )
            continue
        finally:
            out["io_retries"][i] = reader.retries - retries_before
        out["content_sha256"][i] = hashlib.sha256(data).hexdigest()
        decoded = (
            probe_image(data, decode_limits)
            if decode == "device"
            else decode_image(data, input_size, policy, decode_limits, interpolation)
        )
        if isinstance(decoded, DecodeError):
            out["error_stage"][i], out["error_type"][i], out["error_message"][i] = (
                "decode",
                decoded.error_type,
                decoded.message,
            )
            continue
        out["width"][i], out["height"][i] = decoded.width, decoded.height
        if isinstance(decoded, ProbedImage):
            out["encoded"][i], out["orientation"][i] = data, decoded.orientation
            out["device_jpeg"][i] = decoded.jpeg_rgb_or_gray
            continue
        assert isinstance(decoded, DecodedImage)
        out["valid_width"][i], out["valid_height"][i] = decoded.valid_width, decoded.valid_height
        out["pixels"][i] = decoded.pixels
    return out


def read_decode_listing(
    batch: dict[str, np.ndarray], *, listing_batch: int, s3: dict[str, Any], **decode: Any
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task over listing files (`listing`: their URIs): reads each file's entries and yields decoded
    rows `listing_batch` at a time, so that a file of thousands of inputs streams out in small blocks."""
    settings = S3Settings(**s3)
    for uri in batch["listing"]:
        fs, path = filesystem_for(str(uri), settings)
        entries = pq.read_table(path, filesystem=fs, columns=["uri", "version", "labels"])
        for start in range(0, entries.num_rows, listing_batch):
            part = entries.slice(start, listing_batch)
            yield read_decode_batch(
                {
                    "uri": np.array(part.column("uri").to_pylist(), dtype=object),
                    "version": np.array(part.column("version").to_pylist(), dtype=object),
                    "labels": _labels_column(part.column("labels").to_pylist(), part.num_rows),
                },
                s3=s3,
                **decode,
            )


def _labels_column(labels: Any, n: int) -> np.ndarray:
    """One entry a row: its label tokens (a list), or None where it has none."""
    column = np.empty(n, dtype=object)
    if labels is not None:
        for index, tokens in enumerate(labels):
            column[index] = None if tokens is None else [str(token) for token in tokens]
    return column
