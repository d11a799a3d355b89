"""Containers of images as inputs: WebDataset shards and Parquet image tables. Which format an input is, how
its containers are listed, and a container read as samples with the rules every reader of one follows.

Listing: a container is listed like a file (`uri`, `size`, `version`, the version its size and modification
time), never opened: an unchanged container can be skipped without a GET. A folder or prefix lists its `.tar`
and `.tgz` (or `.parquet`) files, a manifest its entries, a brace pattern (`s3://b/shards/{000000..000999}.tar`) the
names it expands to, with the sizes and versions a listing of the folder they share gives them (a name that
no object has is listed without, and reading it becomes its error row).

Reading (`read_container`): the samples of one container, in order, as `Sample`s and `SampleFailure`s, with
- the keys to leave out (`skip`: done already, or staged by an earlier attempt of the run) or the only keys to
  read (`only`: the samples whose earlier attempts all failed);
- each key once: a key met again later in the container is not read again, and the container's own failure
  names it (sample keys must be unique within a container);
- the container's own failures (it cannot be opened, damage past which nothing can be read, repeated keys)
  merged into one, last, with `key` None;
- an outage of the store raised (`StoreUnavailableError`): the run's failure, not the container's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.fs as pafs

from camray.io.bounded_duckdb import bounded_duckdb
from camray.io.container_samples import CONTAINER_KEY, Sample, SampleFailure, sample_key
from camray.io.image_tables import TableColumns, iter_table
from camray.io.listing import MANIFEST_SUFFIXES, iter_listing
from camray.io.s3 import StoreUnavailableError
from camray.io.shards import iter_shard
from camray.io.sources import S3Settings, filesystem_for, is_s3, store_errors
from camray.io.streams import open_random_access, open_stream

if TYPE_CHECKING:
    import duckdb

logger = logging.getLogger(__name__)

FILES, WEBDATASET, PARQUET = "files", "webdataset", "parquet"
# What a folder or prefix lists of each format; a shard compressed whole is read too (`tarfile` sees to it).
CONTAINER_SUFFIXES = {WEBDATASET: [".tar", ".tgz"], PARQUET: [".parquet"]}
SHARD_NAMES = (".tar", ".tgz", ".tar.gz")
CONTAINERS = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("version", pa.string())])
CHUNK_ROWS = 50_000
# The keys a container's own failure names when it lists repeated keys.
NAMED_KEYS = 5
# DuckDB's working memory while a brace pattern is matched against its folder's listing.
BRACE_MEMORY_LIMIT = "64MB"


@dataclass(frozen=True)
class ContainerFormat:
    """How to read a container: plain data, rebuilt by the read tasks from `source.*`."""

    kind: str  # WEBDATASET or PARQUET
    image_suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    labels_key: str | None = None
    image_column: str = "image"
    id_column: str | None = None
    labels_column: str | None = None
    max_member_bytes: int = 200 << 20


# --- which format -------------------------------------------------------------------------------------------


_BRACES = re.compile(r"(?<!\\)\{[^{}]*(?:,|\.\.)[^{}]*(?<!\\)\}")


def is_brace_pattern(uri: str) -> bool:
    """A URI with `{a,b}` or `{000..999}` in it (an unescaped brace holding a list or a range)."""
    return bool(_BRACES.search(uri))


def expand_braces(uri: str) -> Iterator[str]:
    from braceexpand import braceexpand

    return braceexpand(uri)


def detect_format(uri: str, image_suffixes: list[str], recursive: bool, s3: S3Settings) -> str:
    """`webdataset` where `uri` (a file, a brace pattern), a manifest's first entry or a folder's first file (in
    name order, images and shards alike) is named as a shard (`.tar`, `.tgz`, `.tar.gz`); else `files`. A
    Parquet table is never guessed."""
    if is_brace_pattern(uri):
        return WEBDATASET if next(expand_braces(uri)).lower().endswith(SHARD_NAMES) else FILES
    fs, path = filesystem_for(uri, s3)
    with store_errors("listing of", uri, s3):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"input {uri} does not exist")
        if info.type == pafs.FileType.File and not uri.lower().endswith(MANIFEST_SUFFIXES):
            return WEBDATASET if uri.lower().endswith(SHARD_NAMES) else FILES
        extensions = [] if info.type == pafs.FileType.File else [*image_suffixes, *CONTAINER_SUFFIXES[WEBDATASET]]
        first = next(iter_listing(uri, extensions, recursive, s3, chunk_rows=1), None)
    if first is None or not first.num_rows:
        return FILES
    return WEBDATASET if str(first.column("uri")[0]).lower().endswith(SHARD_NAMES) else FILES


# --- listing ------------------------------------------------------------------------------------------------


def iter_containers(
    uri: str, kind: str, recursive: bool, s3: S3Settings, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pa.Table]:
    """The containers `uri` names, as `CONTAINERS` chunks (see the module docstring). Raises FileNotFoundError
    for an input that does not exist."""
    if is_brace_pattern(uri):
        yield from _brace_listing(uri, s3, chunk_rows)
        return
    fs, path = filesystem_for(uri, s3)
    if kind == PARQUET and uri.lower().endswith(".parquet"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:  # one table file, not a manifest of URIs
            name = f"s3://{path}" if is_s3(uri) else path
            yield pa.table([[name], [info.size], [f"{info.size}-{info.mtime_ns or 0}"]], schema=CONTAINERS)
            return
    for chunk in iter_listing(uri, CONTAINER_SUFFIXES[kind], recursive, s3, chunk_rows):
        yield chunk.select(CONTAINERS.names).cast(CONTAINERS)


def _normalised(uri: str, s3: S3Settings) -> str:
    """A name as the listing writes it: `s3://bucket/key`, or an absolute local path."""
    return uri if is_s3(uri) else filesystem_for(uri, s3)[1]


def brace_folder(pattern: str) -> str:
    """The folder or prefix that holds every name a brace pattern expands to: its text before the first brace,
    up to the last `/`."""
    literal = re.split(r"(?<!\\)\{", pattern, maxsplit=1)[0]
    return literal.rsplit("/", 1)[0] if "/" in literal else "."


def _brace_listing(pattern: str, s3: S3Settings, chunk_rows: int) -> Iterator[pa.Table]:
    """The names `pattern` expands to, in its order, each with the size and version its folder's listing gives
    it (none where no object has the name). The expansion and the listing meet in DuckDB, out of core: a
    pattern of a million names holds no list of them."""
    folder = brace_folder(pattern)
    with bounded_duckdb(BRACE_MEMORY_LIMIT, threads=1) as con:
        con.execute("CREATE TABLE wanted (uri VARCHAR, seq BIGINT)")
        names: list[str] = []
        position = 0
        for name in expand_braces(pattern):
            names.append(_normalised(name, s3))
            if len(names) >= chunk_rows:
                _insert_names(con, names, position)
                position += len(names)
                names = []
        _insert_names(con, names, position)
        con.execute("CREATE TABLE found (uri VARCHAR, size BIGINT, version VARCHAR)")
        fs, path = filesystem_for(folder, s3)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            for chunk in iter_listing(folder, [], True, s3, chunk_rows):
                con.register("chunk", chunk.select(CONTAINERS.names))
                con.execute("INSERT INTO found SELECT uri, size, version FROM chunk")
                con.unregister("chunk")
        reader = con.sql(
            """
            SELECT w.uri, coalesce(f.size, -1) AS size, coalesce(f.version, '') AS version
            FROM wanted w LEFT JOIN found f USING (uri) ORDER BY w.seq
            """
        ).to_arrow_reader(chunk_rows)
        for batch in reader:
            if batch.num_rows:
                yield pa.Table.from_batches([batch]).cast(CONTAINERS)


def _insert_names(con: duckdb.DuckDBPyConnection, names: list[str], first: int) -> None:
    if names:
        chunk = pa.table({"uri": names, "seq": pa.array(range(first, first + len(names)), pa.int64())})
        con.register("names", chunk)
        con.execute("INSERT INTO wanted SELECT uri, seq FROM names")
        con.unregister("names")


# --- reading ------------------------------------------------------------------------------------------------


@dataclass
class ContainerRead:
    """What reading one container came to: keys met (`identities`: samples, and the container's own failure if
    any), rows given out, keys left out, and the store's retries."""

    uri: str
    identities: int = 0
    emitted: int = 0
    left_out: int = 0
    retries: int = 0
    _failures: list[SampleFailure] = field(default_factory=list)
    _repeated: list[str] = field(default_factory=list)


def read_container(
    uri: str,
    fmt: ContainerFormat,
    s3: S3Settings,
    read: ContainerRead,
    skip: frozenset[str] = frozenset(),
    only: frozenset[str] | None = None,
) -> Iterator[Sample | SampleFailure]:
    """The samples of the container at `uri` (see the module docstring); `read` is filled in as they come."""
    seen: set[str] = set()
    stream = None
    try:
        if fmt.kind == WEBDATASET:
            stream = open_stream(uri, s3)
            items = iter_shard(stream, list(fmt.image_suffixes), fmt.labels_key, fmt.max_member_bytes)
        else:
            with store_errors("GetObject", uri, s3):
                stream = open_random_access(uri, s3)
            items = iter_table(stream, TableColumns(fmt.image_column, fmt.id_column, fmt.labels_column))
        with store_errors("GetObject", uri, s3):
            for item in items:
                read.retries = getattr(stream, "retries", 0)
                if item.key is None:
                    read._failures.append(item)
                    continue
                if item.key in seen:
                    read._repeated.append(item.key)
                    continue
                seen.add(item.key)
                read.identities += 1
                if item.key in skip or (only is not None and item.key not in only):
                    read.left_out += 1
                    continue
                read.emitted += 1
                yield item
    except StoreUnavailableError:
        raise
    except (OSError, ValueError) as exc:  # missing, forbidden, no regular file, rewritten mid-read
        read._failures.append(SampleFailure(None, type(exc).__name__, str(exc)))
    finally:
        if stream is not None:
            read.retries = getattr(stream, "retries", 0)
            stream.close()
    own = _own_failure(read)
    if own is not None:
        read.identities += 1
        if CONTAINER_KEY in skip:
            read.left_out += 1
        else:
            read.emitted += 1
            yield own


def _own_failure(read: ContainerRead) -> SampleFailure | None:
    """The container's own failures and repeated keys, as one."""
    failures = list(read._failures)
    if read._repeated:
        named = ", ".join(read._repeated[:NAMED_KEYS])
        more = f" and {len(read._repeated) - NAMED_KEYS} more" if len(read._repeated) > NAMED_KEYS else ""
        failures.append(
            SampleFailure(
                None,
                "RepeatedKeys",
                f"{len(read._repeated)} samples reuse a key met earlier in the container and were not read "
                f"({named}{more}); keys must be unique within a container",
            )
        )
    if not failures:
        return None
    shown = failures[:NAMED_KEYS]
    message = "; ".join(failure.message for failure in shown)
    if len(failures) > len(shown):
        message += f"; and {len(failures) - len(shown)} more"
    return SampleFailure(None, failures[0].error_type, message)


def read_images(uri: str, fmt: ContainerFormat, keys: set[str], s3: S3Settings) -> dict[str, bytes]:
    """The image bytes of the samples `keys` of one container, reading it once and no further than the last of
    them (for tools that show a few samples)."""
    found: dict[str, bytes] = {}
    if not keys:
        return found
    for item in read_container(uri, fmt, s3, ContainerRead(uri), only=frozenset(keys)):
        if isinstance(item, Sample):
            found[item.key] = item.data
        if len(found) == len(keys):
            break
    return found


def layout_path(image_uri: str, container_uri: str | None) -> str:
    """Where a sample's files go in an export laid out like its inputs: `bucket/shards/shard-000/KEY` for
    sample `KEY` of `s3://bucket/shards/shard-000.tar`, `bucket/images/cat` for `s3://bucket/images/cat.jpg`
    (no suffix: the caller adds its own)."""
    if not container_uri:
        path = image_uri.removeprefix("s3://").removeprefix("file://")
        return str(PurePosixPath(path).with_suffix("")) if PurePosixPath(path).suffix else path
    folder = container_uri.removeprefix("s3://").removeprefix("file://")
    stem = str(PurePosixPath(folder).with_suffix("")) if PurePosixPath(folder).suffix else folder
    # A key is the container's to name: `..` or an absolute path in it must not lead out of the export.
    parts = [part for part in sample_key(container_uri, image_uri).split("/") if part not in ("", ".", "..")]
    return "/".join([stem, *(parts or ["_container"])])
