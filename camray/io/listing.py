"""Listing a folder, an S3 prefix or a manifest as a stream of Arrow chunks, so that the driver's memory does not
grow with the input: a million-entry manifest or a bucket of millions of objects passes through in chunks of
`chunk_rows` entries (`uri`, `size`, `version`), never as one list.

Folders are walked directory by directory with `os.scandir`, S3 prefixes page through `ListObjectsV2` (1,000
keys a page), manifests are read in blocks (`.txt` line by line, `.csv` and `.parquet` batch by batch). The
version of an object is its size and modification time (`"<size>-<mtime_ns>"`); a manifest gives none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from camray.io.s3 import StoreUnavailableError
from camray.io.sources import Listed, S3Settings, endpoint_of, filesystem_for, is_s3, s3_client

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")
LISTING = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("version", pa.string())])
CHUNK_ROWS = 50_000


def _chunks(entries: Iterable[tuple[str, int, str]], chunk_rows: int) -> Iterator[pa.Table]:
    uris: list[str] = []
    sizes: list[int] = []
    versions: list[str] = []
    for uri, size, version in entries:
        uris.append(uri)
        sizes.append(size)
        versions.append(version)
        if len(uris) >= chunk_rows:
            yield pa.table([uris, sizes, versions], schema=LISTING)
            uris, sizes, versions = [], [], []
    if uris:
        yield pa.table([uris, sizes, versions], schema=LISTING)


def _wanted(name: str, extensions: list[str]) -> bool:
    return not name.startswith(".") and (not extensions or Path(name).suffix.lower() in extensions)


def _walk_local(root: str, extensions: list[str], recursive: bool) -> Iterator[tuple[str, int, str]]:
    """Files under `root`, each directory's entries in name order, without holding the tree."""
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as exc:  # a folder we may not read: say so, list the rest
            logger.warning("cannot list %s: %s", directory, exc)
            continue
        subdirectories = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if recursive and not entry.name.startswith("."):
                    subdirectories.append(entry.path)
            elif _wanted(entry.name, extensions):
                try:
                    stat = entry.stat()
                except OSError:  # a dangling link: listed, so that reading it becomes the image's error row
                    yield entry.path, -1, ""
                    continue
                yield entry.path, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}"
        pending.extend(reversed(subdirectories))


def _walk_s3(uri: str, extensions: list[str], recursive: bool, s3: S3Settings) -> Iterator[tuple[str, int, str]]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/")
    prefix = f"{prefix}/" if prefix else ""
    pages = (
        s3_client(s3)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=prefix, **({} if recursive else {"Delimiter": "/"}))
    )
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or not _wanted(key.rsplit("/", 1)[-1], extensions):
                continue
            # Milliseconds, as S3 reports them and as pyarrow's listing gave them: versions stay comparable.
            mtime_ns = int(item["LastModified"].timestamp() * 1000) * 1_000_000
            yield f"s3://{bucket}/{key}", item["Size"], f"{item['Size']}-{mtime_ns}"


def _named_failures(pages: Iterable[dict], uri: str, s3: S3Settings) -> Iterator[dict]:
    """Listing pages; a store that fails every attempt raises `StoreUnavailableError` naming the operation."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield from pages
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise FileNotFoundError(f"input {uri} does not exist (no such bucket)") from exc
        raise StoreUnavailableError(
            f"S3 ListObjectsV2 {uri} on {endpoint_of(s3)} failed after up to {s3.max_attempts} attempts: {exc}"
        ) from exc
    except BotoCoreError as exc:
        raise StoreUnavailableError(
            f"S3 ListObjectsV2 {uri} on {endpoint_of(s3)} failed after {s3.max_attempts} attempts: {exc}"
        ) from exc


def _manifest(fs: pafs.FileSystem, path: str, uri: str) -> Iterator[tuple[str, int, str]]:
    lower = uri.lower()
    if lower.endswith(".txt"):
        with fs.open_input_stream(path) as stream:
            rest = b""
            while block := stream.read(1 << 20):
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    text = line.decode().strip()
                    if text and not text.startswith("#"):
                        yield text, -1, ""
            text = rest.decode().strip()
            if text and not text.startswith("#"):
                yield text, -1, ""
        return
    if lower.endswith(".parquet"):
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            if "uri" not in parquet.schema_arrow.names:
                raise ValueError(f"manifest {uri} must have a `uri` column, has {parquet.schema_arrow.names}")
            for batch in parquet.iter_batches(columns=["uri"], batch_size=CHUNK_ROWS):
                yield from ((str(value), -1, "") for value in batch.column(0).to_pylist() if value)
        return
    with fs.open_input_stream(path) as stream:
        reader = pacsv.open_csv(stream)
        if "uri" not in reader.schema.names:
            raise ValueError(f"manifest {uri} must have a `uri` column, has {reader.schema.names}")
        for batch in reader:
            yield from ((str(value), -1, "") for value in batch.column("uri").to_pylist() if value)


def iter_listing(
    uri: str, extensions: list[str], recursive: bool, s3: S3Settings, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pa.Table]:
    """A folder, an S3 prefix or a manifest (`.txt`, `.csv`/`.parquet` with a `uri` column) as LISTING chunks.

    A manifest is the list to process as given, every time: its entries carry no version. Raises
    FileNotFoundError for an input that does not exist."""
    fs, path = filesystem_for(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {uri} does not exist")
    if info.type == pafs.FileType.File:
        if uri.lower().endswith(MANIFEST_SUFFIXES):
            yield from _chunks(_manifest(fs, path, uri), chunk_rows)
        else:
            version = f"{info.size}-{info.mtime_ns if info.mtime_ns is not None else 0}"
            yield pa.table([[f"s3://{path}" if is_s3(uri) else path], [info.size], [version]], schema=LISTING)
        return
    entries = _walk_s3(uri, extensions, recursive, s3) if is_s3(uri) else _walk_local(path, extensions, recursive)
    yield from _chunks(entries, chunk_rows)


def list_inputs(uri: str, extensions: list[str], recursive: bool, s3: S3Settings) -> list[Listed]:
    """The whole listing at once, sorted by URI: for callers that want a list (tools, tests), not for runs."""
    listed = [
        Listed(uri_, size, version)
        for chunk in iter_listing(uri, extensions, recursive, s3)
        for uri_, size, version in zip(*(chunk.column(name).to_pylist() for name in LISTING.names), strict=True)
    ]
    if not uri.lower().endswith(MANIFEST_SUFFIXES):
        listed.sort(key=lambda item: item.uri)
    return listed
