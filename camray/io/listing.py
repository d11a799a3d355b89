"""Listing a folder, an S3 prefix or a manifest as a stream of Arrow chunks, so that the driver's memory does not
grow with the input: a million-entry manifest or a bucket of millions of objects passes through in chunks of
`chunk_rows` entries (`uri`, `size`, `version`), never as one list.

Folders are walked directory by directory with `os.scandir`, S3 prefixes page through `ListObjectsV2` (1,000
keys a page), manifests are read in blocks (`.txt` and `.jsonl` line by line, `.csv` and `.parquet` batch by
batch), and an S3 Inventory report (its `manifest.json`) data file by data file, batch by batch. The version of an
object is its size and modification time (`"<size>-<mtime_ns>"`), from a folder, a LIST or an inventory alike, so
that a bucket listed one night by LIST and the next by its inventory is not done twice; a manifest gives none
unless it has a `version` column.

`labels` are an input's image-level labels as given, tokens that name classes (names, or ids in decimal), null
where the input carries none: a manifest's `labels` column (CSV: `|`-separated; Parquet and JSON Lines: a list),
or, with `labels_from="folder"`, the name of the sub-folder of the listed folder or prefix that holds the image
(torchvision's `ImageFolder` layout). What they name is the model's business, not the listing's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from camray.errors import InputNotFound
from camray.io.s3 import StoreUnavailableError
from camray.io.sources import Listed, S3Settings, endpoint_of, filesystem_for, is_s3, s3_client

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet", ".jsonl")
INVENTORY_NAME = "manifest.json"
LISTING = pa.schema(
    [("uri", pa.string()), ("size", pa.int64()), ("version", pa.string()), ("labels", pa.list_(pa.string()))]
)
CHUNK_ROWS = 50_000
# Separates the labels of one image in a CSV manifest's `labels` column.
CSV_LABEL_SEPARATOR = "|"

# An entry: uri, size (-1 unknown), version ("" none), and optionally its labels (None: it carries none).
Entry = tuple[str, int, str] | tuple[str, int, str, list[str] | None]


def _chunks(entries: Iterable[Entry], chunk_rows: int) -> Iterator[pa.Table]:
    uris: list[str] = []
    sizes: list[int] = []
    versions: list[str] = []
    labels: list[list[str] | None] = []
    for uri, size, version, *rest in entries:
        uris.append(uri)
        sizes.append(size)
        versions.append(version)
        labels.append(rest[0] if rest else None)
        if len(uris) >= chunk_rows:
            yield pa.table([uris, sizes, versions, labels], schema=LISTING)
            uris, sizes, versions, labels = [], [], [], []
    if uris:
        yield pa.table([uris, sizes, versions, labels], schema=LISTING)


def _folder_labels(entries: Iterable[Entry], root: str) -> Iterator[Entry]:
    """Each entry with the name of its first sub-folder under `root` as its one label (none directly under it)."""
    root = root.rstrip("/") + "/"
    for uri, size, version, *_ in entries:
        relative = uri[len(root) :] if uri.startswith(root) else ""
        folder, separator, _ = relative.partition("/")
        yield uri, size, version, [folder] if separator and folder else None


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
    for page in _named_failures(pages, uri, s3):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") or not _wanted(key.rsplit("/", 1)[-1], extensions):
                continue
            # Milliseconds, as S3 reports them and as pyarrow's listing gave them: versions stay comparable.
            mtime_ns = int(item["LastModified"].timestamp() * 1000) * 1_000_000
            yield f"s3://{bucket}/{key}", item["Size"], f"{item['Size']}-{mtime_ns}"


def _named_failures(pages: Iterable[dict], uri: str, s3: S3Settings) -> Iterator[dict]:
    """Listing pages; a page the store fails after every attempt raises `StoreUnavailableError`, one it refuses
    `PermissionError` or `OSError`, each naming the operation, the input and the endpoint, wherever the listing
    has got to (botocore's own errors are neither `OSError`s nor one line)."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"S3 ListObjectsV2 {uri} on {endpoint_of(s3)}"
    try:
        yield from pages
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code == "NoSuchBucket":
            raise FileNotFoundError(f"input {uri} does not exist (no such bucket)") from exc
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            raise PermissionError(f"{where}: access denied ({code})") from exc
        if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
            raise StoreUnavailableError(f"{where} failed after {s3.max_attempts} attempts: {exc}") from exc
        raise OSError(f"{where} failed: {code} {error.get('Message', '')}".rstrip()) from exc
    except BotoCoreError as exc:  # connection refused, reset, timed out: every attempt spent
        raise StoreUnavailableError(f"{where} failed after {s3.max_attempts} attempts: {exc}") from exc


def check_input_exists(uri: str, s3: S3Settings) -> None:
    """Raises `InputNotFound` for an input that is not there, naming the missing bucket, or the folder (with the
    nearest one above it that exists) or S3 prefix; other failures of the store raise as they come.

    An S3 prefix with no object under it is not there either: S3 has no folders, and a prefix holding nothing
    cannot be told from a misspelt one."""
    fs, path = filesystem_for(uri, s3)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return
    if is_s3(uri):
        bucket, _, key = path.partition("/")
        if not key or fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise InputNotFound(f"input {uri} does not exist: there is no bucket `{bucket}` on {endpoint_of(s3)}")
        raise InputNotFound(
            f"input {uri} does not exist: bucket `{bucket}` on {endpoint_of(s3)} holds no object at or under `{key}`"
        )
    existing = next((parent for parent in Path(path).parents if parent.is_dir()), Path("/"))
    raise InputNotFound(f"input {uri} does not exist: no file or folder {path} (the nearest folder is {existing})")


def _manifest(fs: pafs.FileSystem, path: str, uri: str) -> Iterator[Entry]:
    lower = uri.lower()
    if lower.endswith(".txt"):
        for text in _lines(fs, path):
            if text and not text.startswith("#"):
                yield text, -1, ""
        return
    if lower.endswith(".jsonl"):
        yield from _json_lines(fs, path, uri)
        return
    if lower.endswith(".parquet"):
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            if "uri" not in names:
                raise ValueError(f"manifest {uri} must have a `uri` column, has {names}")
            columns = [name for name in ("uri", "version", "labels") if name in names]
            for batch in parquet.iter_batches(columns=columns, batch_size=CHUNK_ROWS):
                yield from _manifest_entries(batch, uri)
        return
    with fs.open_input_stream(path) as stream:
        # Labels and versions are text, whatever they look like: an id `007` stays `007`, `3|5` is two labels.
        reader = pacsv.open_csv(
            stream,
            convert_options=pacsv.ConvertOptions(
                column_types={"uri": pa.string(), "version": pa.string(), "labels": pa.string()}
            ),
        )
        if "uri" not in reader.schema.names:
            raise ValueError(f"manifest {uri} must have a `uri` column, has {reader.schema.names}")
        for batch in reader:
            yield from _manifest_entries(batch, uri)


def _lines(fs: pafs.FileSystem, path: str) -> Iterator[str]:
    """The stripped lines of a text file, read in blocks."""
    with fs.open_input_stream(path) as stream:
        rest = b""
        while block := stream.read(1 << 20):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line.decode().strip()
        yield rest.decode().strip()


def _json_lines(fs: pafs.FileSystem, path: str, uri: str) -> Iterator[Entry]:
    """A JSON Lines manifest: an object a line with `uri`, and optionally `version` and `labels` (a list)."""
    for number, text in enumerate(_lines(fs, path), start=1):
        if not text:
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"manifest {uri}, line {number}: not JSON ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("uri"), str):
            raise ValueError(f"manifest {uri}, line {number}: must be an object with a `uri` string")
        if record["uri"]:
            yield record["uri"], -1, str(record.get("version") or ""), _tokens(record.get("labels"), uri, number)


def _manifest_entries(batch: pa.RecordBatch, uri: str) -> Iterator[Entry]:
    names = batch.schema.names
    versions = batch.column("version").to_pylist() if "version" in names else [None] * batch.num_rows
    labels = batch.column("labels").to_pylist() if "labels" in names else [None] * batch.num_rows
    rows = zip(batch.column("uri").to_pylist(), versions, labels, strict=True)
    for number, (value, version, given) in enumerate(rows):
        if value:
            yield str(value), -1, str(version or ""), _tokens(given, uri, number)


def _tokens(given: object, uri: str, row: int) -> list[str] | None:
    """An entry's labels as text tokens: a list's items, or a text's `|`-separated parts (CSV); None for none."""
    if given is None:
        return None
    if isinstance(given, str):
        return [token.strip() for token in given.split(CSV_LABEL_SEPARATOR) if token.strip()]
    if isinstance(given, list) and all(isinstance(token, str | int) and not isinstance(token, bool) for token in given):
        return [str(token) for token in given]
    if isinstance(given, int) and not isinstance(given, bool):
        return [str(given)]
    raise ValueError(f"manifest {uri}, entry {row}: `labels` must be a list of class names or ids, not {given!r}")


# An inventory's fields, as its CSV schema names them (`fileSchema`), and the Parquet columns of the same.
_INVENTORY_FIELDS = {
    "Bucket": "bucket",
    "Key": "key",
    "IsLatest": "is_latest",
    "IsDeleteMarker": "is_delete_marker",
    "Size": "size",
    "LastModifiedDate": "last_modified_date",
    "ETag": "e_tag",
}


def _inventory(fs: pafs.FileSystem, path: str, uri: str, extensions: list[str]) -> Iterator[tuple[str, int, str]]:
    """The current objects an S3 Inventory report lists, data file by data file (CSV, gzipped, with URL-encoded
    keys; or Parquet), in blocks. Delete markers and noncurrent versions of a versioned bucket are left out.

    The version is `"<size>-<last_modified_ns>"`, as a LIST gives it, where the report has both fields; the
    ETag where it has not; none where it has neither (then the object is processed every night)."""
    with fs.open_input_stream(path) as stream:
        manifest = json.loads(stream.read())
    file_format = manifest.get("fileFormat", "")
    if file_format not in ("CSV", "Parquet"):
        raise ValueError(f"inventory {uri}: `fileFormat` {file_format!r} is not read; configure CSV or Parquet")
    # Data file keys are relative to the destination bucket, which holds the manifest too unless it says
    # otherwise; a report copied to disk keeps that tree below some folder above the manifest.
    destination = manifest.get("destinationBucket", "").rsplit(":", 1)[-1] or path.split("/", 1)[0]
    for item in manifest.get("files", []):
        data_path = f"{destination}/{item['key']}" if is_s3(uri) else _local_data_file(path, item["key"])
        if file_format == "CSV":
            names = [name.strip() for name in manifest.get("fileSchema", "").split(",")]
            batches = _inventory_csv(fs, data_path, names)
        else:
            batches = _inventory_parquet(fs, data_path)
        for batch in batches:
            yield from _inventory_entries(batch, extensions, url_encoded=file_format == "CSV")


def _local_data_file(manifest_path: str, key: str) -> str:
    for folder in Path(manifest_path).parents:
        if (folder / key).is_file():
            return str(folder / key)
    raise FileNotFoundError(f"inventory {manifest_path}: data file {key} is in no folder above the manifest")


def _inventory_csv(fs: pafs.FileSystem, path: str, names: list[str]) -> Iterator[pa.RecordBatch]:
    missing = {"Bucket", "Key"} - set(names)
    if missing:
        raise ValueError(f"inventory `fileSchema` lacks {sorted(missing)}: {names}")
    wanted = [name for name in names if name in _INVENTORY_FIELDS]
    with fs.open_input_stream(path, compression="gzip" if path.endswith(".gz") else None) as stream:
        reader = pacsv.open_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=names),
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted, column_types={name: pa.string() for name in wanted}
            ),
        )
        for batch in reader:
            yield pa.RecordBatch.from_arrays(batch.columns, [_INVENTORY_FIELDS[name] for name in batch.schema.names])


def _inventory_parquet(fs: pafs.FileSystem, path: str) -> Iterator[pa.RecordBatch]:
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        columns = [name for name in _INVENTORY_FIELDS.values() if name in parquet.schema_arrow.names]
        yield from parquet.iter_batches(columns=columns, batch_size=CHUNK_ROWS)


def _inventory_entries(
    batch: pa.RecordBatch, extensions: list[str], url_encoded: bool
) -> Iterator[tuple[str, int, str]]:
    column = {name: batch.column(name) for name in batch.schema.names}
    current = pa.array([True] * batch.num_rows)
    for flag, wanted in (("is_latest", True), ("is_delete_marker", False)):
        if flag in column:
            values = column[flag]
            if pa.types.is_string(values.type):
                values = pc.equal(pc.utf8_lower(values), "true")
            current = pc.and_(current, pc.equal(pc.fill_null(values, wanted), wanted))
    sizes = _as_ints(column.get("size"), batch.num_rows)
    mtimes_ns = _as_mtimes_ns(column.get("last_modified_date"), batch.num_rows)
    etags = column["e_tag"].to_pylist() if "e_tag" in column else [None] * batch.num_rows
    rows = zip(
        current.to_pylist(),
        column["bucket"].to_pylist(),
        column["key"].to_pylist(),
        sizes,
        mtimes_ns,
        etags,
        strict=True,
    )
    for is_current, bucket, key, size, mtime_ns, etag in rows:
        if not is_current or not key:
            continue
        key = unquote_plus(key) if url_encoded else key
        if key.endswith("/") or not _wanted(key.rsplit("/", 1)[-1], extensions):
            continue
        version = f"{size}-{mtime_ns}" if size is not None and mtime_ns is not None else (etag or "").strip('"')
        yield f"s3://{bucket}/{key}", -1 if size is None else size, version


def _as_ints(values: pa.Array | None, rows: int) -> list[int | None]:
    if values is None:
        return [None] * rows
    return [None if value in (None, "") else int(value) for value in values.to_pylist()]


def _as_mtimes_ns(values: pa.Array | None, rows: int) -> list[int | None]:
    """Last-modified times in nanoseconds, at the milliseconds S3 keeps: a CSV's ISO 8601 text, or Parquet's
    `last_modified_date` timestamp."""
    if values is None:
        return [None] * rows
    if pa.types.is_timestamp(values.type):
        millis = pc.cast(pc.cast(values, pa.timestamp("ms", tz="UTC")), pa.int64()).to_pylist()
    else:
        millis = [
            None if not text else round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
            for text in values.to_pylist()
        ]
    return [None if value is None else value * 1_000_000 for value in millis]


def iter_listing(
    uri: str,
    extensions: list[str],
    recursive: bool,
    s3: S3Settings,
    chunk_rows: int = CHUNK_ROWS,
    labels_from: str | None = None,
) -> Iterator[pa.Table]:
    """A folder, an S3 prefix, a manifest (`.txt`, `.csv`/`.parquet`/`.jsonl` with a `uri` column) or an S3
    Inventory report (the URI of its `manifest.json`) as LISTING chunks; `labels_from="folder"` labels a folder's
    or prefix's entries by their sub-folder (the module's docstring).

    A manifest is the list to process as given, every time, unless its entries carry a version. Raises
    FileNotFoundError for an input that does not exist."""
    fs, path = filesystem_for(uri, s3)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {uri} does not exist")
    if info.type == pafs.FileType.File:
        if uri.rsplit("/", 1)[-1] == INVENTORY_NAME:
            yield from _chunks(_inventory(fs, path, uri, extensions), chunk_rows)
        elif uri.lower().endswith(MANIFEST_SUFFIXES):
            yield from _chunks(_manifest(fs, path, uri), chunk_rows)
        else:
            version = f"{info.size}-{info.mtime_ns if info.mtime_ns is not None else 0}"
            yield pa.table([[f"s3://{path}" if is_s3(uri) else path], [info.size], [version], [None]], schema=LISTING)
        return
    entries: Iterable[Entry] = (
        _walk_s3(uri, extensions, recursive, s3) if is_s3(uri) else _walk_local(path, extensions, recursive)
    )
    if labels_from == "folder":
        entries = _folder_labels(entries, f"s3://{path}" if is_s3(uri) else path)
    yield from _chunks(entries, chunk_rows)


def list_inputs(uri: str, extensions: list[str], recursive: bool, s3: S3Settings) -> list[Listed]:
    """The whole listing at once, sorted by URI: for callers that want a list (tools, tests), not for runs."""
    listed = [
        Listed(uri_, size, version)
        for chunk in iter_listing(uri, extensions, recursive, s3)
        for uri_, size, version in zip(
            *(chunk.column(name).to_pylist() for name in ("uri", "size", "version")), strict=True
        )
    ]
    if not uri.lower().endswith(MANIFEST_SUFFIXES):
        listed.sort(key=lambda item: item.uri)
    return listed
