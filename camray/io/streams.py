"""A container (a WebDataset shard, a Parquet image table) opened for reading, local or `s3://`.

A shard is read front to back as one stream: on S3, one GET whose body is consumed as it arrives, never held
whole. A body that breaks off (a reset, a read timeout) is resumed from the byte it reached with a ranged GET
conditional on the object's ETag, so that a shard rewritten meanwhile is never read as half of each version; the
re-requests count as retries and stay under `2 * max_attempts` in all, like a whole-object read's.

A Parquet file needs random access (its footer comes last): `open_random_access` gives pyarrow's file, whose
reads of a row group's columns are coalesced into ranged GETs.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import stat
import time
from typing import Any

import pyarrow as pa

from camray.io.s3 import S3Settings, StoreUnavailableError, s3_objects
from camray.io.sources import filesystem_for, is_s3, store_errors

logger = logging.getLogger(__name__)

# Bytes asked of the store or the disk per read: large enough that Python's per-call cost vanishes, small enough
# to be nothing beside a decoded image.
READ_BYTES = 1 << 20


class ObjectChanged(OSError):
    """The object was rewritten while it was being read: what was read of it belongs to no one version."""


class _S3Body(io.RawIOBase):
    """An S3 object's bytes from one GET, resumed where a broken body left off; `retries` counts re-requests."""

    def __init__(self, uri: str, s3: S3Settings) -> None:
        self._uri = uri
        self._objects = s3_objects(s3)
        self._max_attempts = s3.max_attempts
        self._body, self._etag, self.retries = self._objects.open_body(uri)
        self._position = 0
        self._breaks = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError
        from urllib3.exceptions import ProtocolError

        while True:
            try:
                data = self._body.read(len(buffer))
            except (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ProtocolError) as exc:
                self._resume(exc)
                continue
            buffer[: len(data)] = data
            self._position += len(data)
            return len(data)

    def _resume(self, exc: BaseException) -> None:
        self._breaks += 1
        if self._breaks + self.retries >= 2 * self._max_attempts:
            raise StoreUnavailableError(
                f"S3 GetObject {self._uri} on {self._objects.endpoint}: the response body broke off "
                f"{self._breaks} times, last at byte {self._position} ({exc})"
            ) from exc
        delay = random.random() * min(20.0, 0.05 * 2.0 ** (self._breaks - 1))  # botocore's, for non-throttling
        logger.info("reading %s broke off at byte %d (%s); resuming in %.1f s", self._uri, self._position, exc, delay)
        time.sleep(delay)
        self._body.close()
        try:
            self._body, _, retries = self._objects.open_body(self._uri, self._position, if_match=self._etag)
        except OSError as error:
            if "PreconditionFailed" in str(error) or "412" in str(error):
                raise ObjectChanged(
                    f"{self._uri} was rewritten while it was read (at byte {self._position})"
                ) from error
            raise
        self.retries += retries + 1

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class ContainerStream(io.BufferedReader):
    """A container's bytes, front to back, read `READ_BYTES` at a time; `retries` counts the store's retries."""

    def __init__(self, raw: io.RawIOBase) -> None:
        super().__init__(raw, READ_BYTES)
        self._counted = raw

    @property
    def retries(self) -> int:
        return getattr(self._counted, "retries", 0)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def _local_path(uri: str, s3: S3Settings) -> str:
    """The path of a local container; raises for another scheme and for anything but a regular file (a FIFO
    would block the read, a device never end it)."""
    match = _SCHEME.match(uri)
    if match and match.group(1) != "file":
        raise ValueError(f"unsupported scheme `{match.group(1)}://` in {uri}: inputs are local paths, file:// or s3://")
    path = filesystem_for(uri, s3)[1]
    mode = os.stat(path).st_mode  # FileNotFoundError for a missing file
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{uri} is a directory, not a shard or table file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{uri} is not a regular file (a FIFO, socket or device) and is not read")
    return path


def open_stream(uri: str, s3: S3Settings) -> ContainerStream:
    """The container at `uri` as a forward stream. Raises FileNotFoundError / PermissionError for a missing or
    forbidden object, `StoreUnavailableError` when the store does not answer, ValueError for what is no file."""
    if is_s3(uri):
        return ContainerStream(_S3Body(uri, s3))
    return ContainerStream(io.FileIO(_local_path(uri, s3), "r"))


def open_random_access(uri: str, s3: S3Settings) -> pa.NativeFile:
    """The container at `uri` for random access (Parquet). Same errors as `open_stream`."""
    if not is_s3(uri):
        return pa.OSFile(_local_path(uri, s3))
    fs, path = filesystem_for(uri, s3)
    with store_errors("GetObject", uri, s3):
        return fs.open_input_file(path)
