"""URIs -> listings and bytes, for local paths and `s3://` (AWS or any S3-compatible store).

The endpoint of an S3-compatible store comes from the config or the standard `AWS_ENDPOINT_URL` variable;
credentials come from the AWS chain, which pyarrow and boto3 both follow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)


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
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


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


def s3_client(s3: S3Settings):
    """A boto3 S3 client for the same endpoint and region as `filesystem_for`, with explicit, bounded retries."""
    import boto3
    from botocore.config import Config

    region = s3.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    endpoint = s3.resolved_endpoint()
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or ("us-east-1" if endpoint else None),
        config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60),
    )


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
