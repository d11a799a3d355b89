"""URIs -> bytes (and bytes -> a URI, for the sink), for local paths and `s3://` (AWS or any
S3-compatible store).

The endpoint of an S3-compatible store comes from the config or the standard `AWS_ENDPOINT_URL` variable;
credentials come from the AWS chain, which pyarrow and boto3 both follow. Every S3 operation is bounded in
attempts and time (`camray.io.s3.S3Settings`), through pyarrow and boto3 alike.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from camray.io.s3 import S3Settings, StoreUnavailableError, is_transient, s3_objects

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listed:
    """One input: its URI, size in bytes (-1 if unknown) and a version key (size and modification time)."""

    uri: str
    size: int
    version: str


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem_for(uri: str, s3: S3Settings) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `uri` and the path to pass it."""
    if is_s3(uri):
        endpoint = s3.resolved_endpoint()
        kwargs: dict[str, object] = {
            # The same number of attempts as boto3's (`camray.io.s3`; pyarrow's default is 3), under the SDK's
            # legacy strategy: its standard one keeps a retry quota per filesystem that a long run under throttling
            # drains (about 100 retries), after which it retries nothing and one 503 fails the operation
            # (`tests/io/test_s3.py`). The legacy backoff is shorter (25 ms, doubling: 0.8 s over 6 attempts);
            # a store that throttles for longer wants `storage.s3_max_attempts` raised (10 attempts: 12.8 s).
            # `request_timeout` only applies on Windows and macOS; on Linux the SDK's curl client has its own.
            "retry_strategy": pafs.AwsDefaultS3RetryStrategy(max_attempts=s3.max_attempts),
            "connect_timeout": s3.connect_timeout,
            "request_timeout": s3.read_timeout,
        }
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme
        region = s3.resolved_region()
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri.removeprefix("s3://").rstrip("/")
    path = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def endpoint_of(s3: S3Settings) -> str:
    return s3.resolved_endpoint() or "AWS S3"


@contextmanager
def store_errors(what: str, uri: str, s3: S3Settings) -> Iterator[None]:
    """Names the endpoint in pyarrow's errors for an S3 `uri` (pyarrow's message names the operation, `during
    ListObjectsV2 operation`, and the cause); one that failed every attempt becomes a `StoreUnavailableError`."""
    try:
        yield
    except OSError as exc:
        if not is_s3(uri) or isinstance(exc, FileNotFoundError | PermissionError | StoreUnavailableError):
            raise
        if is_transient(exc):
            raise StoreUnavailableError(
                f"S3 {what} {uri} on {endpoint_of(s3)} failed (up to {s3.max_attempts} attempts): {exc}"
            ) from exc
        raise OSError(f"S3 {what} {uri} on {endpoint_of(s3)} failed: {exc}") from exc


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def s3_client(s3: S3Settings):
    """The process's boto3 S3 client for these settings (bounded retries, attempts counted), for the calls that
    `S3Objects` does not wrap: listing pages and the lease's conditional puts."""
    return s3_objects(s3).client


class ByteReader:
    """Reads whole objects: `s3://` through boto3, counting retries in `retries`; local files through pyarrow.

    Workers call this for many URIs: the S3 client is one per process (`camray.io.s3.s3_objects`).
    """

    def __init__(self, s3: S3Settings) -> None:
        self._s3 = s3
        self._local = pafs.LocalFileSystem()
        self.retries = 0

    def read(self, uri: str) -> bytes:
        if is_s3(uri):
            data, retries = s3_objects(self._s3).get(uri)
            self.retries += retries
            return data
        with self._local.open_input_stream(filesystem_for(uri, self._s3)[1]) as stream:
            return stream.read()


def write_object(uri: str, data: bytes, s3: S3Settings) -> int:
    """Writes `data` whole at `uri`, never a part of it, and returns the S3 retries it took.

    S3: one PutObject, which the store makes visible whole or not at all. Local: a hidden temporary file in
    the same folder, renamed over the target, so a crash mid-write leaves no half file under a real name.
    """
    if is_s3(uri):
        return s3_objects(s3).put(uri, data)
    path = Path(filesystem_for(uri, s3)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return 0
