"""URIs -> listings and bytes, for local paths and `s3://` (AWS or any S3-compatible store).

The endpoint of an S3-compatible store comes from the config or the standard `AWS_ENDPOINT_URL` variable;
credentials come from the AWS chain, which pyarrow and boto3 both follow.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class Listed:
    """One input: its URI, size in bytes (-1 if unknown) and a version key (size and modification time)."""

    uri: str
    size: int
    version: str


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return refuse_credentials_in_endpoint(self.endpoint_url, "`source.s3_endpoint_url`")
        for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(variable):
                return refuse_credentials_in_endpoint(os.environ[variable], f"the {variable} environment variable")
        return None


def refuse_credentials_in_endpoint(url: str, origin: str) -> str:
    """Returns `url` unless it holds `user:password@`: an endpoint is logged and stored with each run's config,
    where a password must never go. The message names neither the user nor the password."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    if "@" in parsed.netloc:
        host = parsed.netloc.rsplit("@", 1)[1]
        raise ValueError(
            f"{origin} must not hold credentials (`user:password@`): pass them through the AWS chain "
            f"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role) and give the endpoint "
            f"as {parsed.scheme}://{host}"
        )
    return url


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem_for(uri: str, s3: S3Settings) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `uri` and the path to pass it."""
    if is_s3(uri):
        endpoint = s3.resolved_endpoint()
        kwargs: dict[str, object] = {}
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme
        region = s3.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        elif endpoint:
            kwargs["region"] = "us-east-1"  # S3-compatible stores ignore it; avoids a lookup against AWS
        return pafs.S3FileSystem(**kwargs), uri.removeprefix("s3://").rstrip("/")
    path = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _uri_of(path: str, s3_source: bool) -> str:
    return f"s3://{path}" if s3_source else path


def _version(info: pafs.FileInfo) -> str:
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    return f"{info.size}-{mtime}"


def list_inputs(uri: str, extensions: list[str], recursive: bool, s3: S3Settings) -> list[Listed]:
    """Lists a folder, an S3 prefix or a manifest, sorted by URI so that runs are reproducible."""
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
    """Reads whole objects, keeping one filesystem per scheme (workers call this for many URIs)."""

    def __init__(self, s3: S3Settings) -> None:
        self._s3 = s3
        self._filesystems: dict[bool, pafs.FileSystem] = {}

    def read(self, uri: str) -> bytes:
        s3_uri = is_s3(uri)
        if s3_uri not in self._filesystems:
            self._filesystems[s3_uri] = filesystem_for(uri, self._s3)[0]
        fs = self._filesystems[s3_uri]
        path = uri.removeprefix("s3://") if s3_uri else filesystem_for(uri, self._s3)[1]
        with fs.open_input_stream(path) as stream:
            return stream.read()
