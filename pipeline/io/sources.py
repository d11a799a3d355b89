"""URIs -> listings and bytes (and bytes -> a URI, for the sink), for local paths and `s3://` (AWS or any
S3-compatible store).

The endpoint of an S3-compatible store comes from the config or the standard `AWS_ENDPOINT_URL` variable;
credentials come from the AWS chain, which pyarrow and boto3 both follow. Every S3 operation is bounded in
attempts and time (`pipeline.io.s3.S3Settings`), through pyarrow and boto3 alike.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.io.s3 import S3Settings, StoreUnavailableError, s3_objects

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")


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
            # Explicit, and the same bounds as boto3's (`pipeline.io.s3`): pyarrow's default is 3 attempts.
            # `request_timeout` only applies on Windows and macOS; on Linux the SDK's curl client has its own.
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s3.max_attempts),
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


# pyarrow's words (the AWS SDK's error names) for the failures its retry strategy retries: seen after the
# last attempt, they mean the store is unavailable, not that the request was wrong.
_TRANSIENT = (
    "NETWORK_CONNECTION",
    "SLOW_DOWN",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "THROTTLING",
    "REQUEST_TIMEOUT",
    "HTTP status 5",
)


@contextmanager
def store_errors(what: str, uri: str, s3: S3Settings) -> Iterator[None]:
    """Names the endpoint in pyarrow's errors for an S3 `uri` (pyarrow's message names the operation, `during
    ListObjectsV2 operation`, and the cause); one that failed every attempt becomes a `StoreUnavailableError`."""
    try:
        yield
    except OSError as exc:
        if not is_s3(uri) or isinstance(exc, FileNotFoundError | PermissionError | StoreUnavailableError):
            raise
        if any(marker in str(exc) for marker in _TRANSIENT):
            raise StoreUnavailableError(
                f"S3 {what} {uri} on {endpoint_of(s3)} failed (up to {s3.max_attempts} attempts): {exc}"
            ) from exc
        raise OSError(f"S3 {what} {uri} on {endpoint_of(s3)} failed: {exc}") from exc


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _uri_of(path: str, s3_source: bool) -> str:
    return f"s3://{path}" if s3_source else path


def _version(info: pafs.FileInfo) -> str:
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return f"{info.size}-{mtime}"


def list_inputs(uri: str, extensions: list[str], recursive: bool, s3: S3Settings) -> list[Listed]:
    """Lists a folder, an S3 prefix or a manifest, sorted by URI so that runs are reproducible."""
    with store_errors("listing of", uri, s3):
        return _list_inputs(uri, extensions, recursive, s3)


def _list_inputs(uri: str, extensions: list[str], recursive: bool, s3: S3Settings) -> list[Listed]:
    fs, path = filesystem_for(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {uri} does not exist")
    if info.type == pafs.FileType.File:
        if not uri.lower().endswith(MANIFEST_SUFFIXES):
            return [Listed(_uri_of(path, is_s3(uri)), info.size, _version(info))]
        return _read_manifest(fs, path, uri)
    selector = pafs.FileSelector(path, recursive=recursive)
    listed = [
        Listed(_uri_of(item.path, is_s3(uri)), item.size, _version(item))
        for item in fs.get_file_info(selector)
        if item.type == pafs.FileType.File
        and not Path(item.path).name.startswith(".")
        and (not extensions or Path(item.path).suffix.lower() in extensions)
    ]
    listed.sort(key=lambda item: item.uri)
    logger.info("listed %d images under %s", len(listed), uri)
    return listed


def _read_manifest(fs: pafs.FileSystem, path: str, uri: str) -> list[Listed]:
    with fs.open_input_file(path) as handle:
        raw = handle.read()
    if uri.lower().endswith(".txt"):
        uris = [line.strip() for line in raw.decode().splitlines() if line.strip() and not line.startswith("#")]
    else:
        table = (
            pq.read_table(pa.BufferReader(raw)) if uri.lower().endswith(".parquet") else pacsv.read_csv(io.BytesIO(raw))
        )
        if "uri" not in table.column_names:
            raise ValueError(f"manifest {uri} must have a `uri` column, has {table.column_names}")
        uris = [str(value) for value in table.column("uri").to_pylist() if value]
    # Sizes and versions are unknown until read: a manifest is taken as the list to process, every time.
    logger.info("manifest %s lists %d images", uri, len(uris))
    return [Listed(item, -1, "") for item in uris]


class ByteReader:
    """Reads whole objects: `s3://` through boto3, counting retries in `retries`; local files through pyarrow.

    Workers call this for many URIs: the S3 client is one per process (`pipeline.io.s3.s3_objects`).
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
