"""A run over WebDataset shards or Parquet image tables, as the runner's steps need it: which format the input
is, and its containers staged for the read tasks without what is done (docs/datasets.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from camray.config import JobConfig
from camray.errors import SetupError
from camray.io.container_done import ContainerHistory, Skipped, to_read
from camray.io.container_staging import StagedContainers, prior_rows, read_tallies, stage
from camray.io.containers import FILES, PARQUET, WEBDATASET, detect_format, iter_containers
from camray.io.image_tables import TableColumns, TableSchemaError, check_schema
from camray.io.sources import S3Settings
from camray.io.streams import open_random_access

if TYPE_CHECKING:
    from camray.io.output_run import OutputRun

logger = logging.getLogger(__name__)


class ListingProgress(Protocol):
    """The runner's counts of the listing step, updated as it goes."""

    run_id: str
    attempt: int
    listed: int
    skipped: int


def input_format(config: JobConfig, source_uri: str, s3: S3Settings) -> str:
    """`files`, `webdataset` or `parquet`: `source.format`, or what the input looks like (`detect_format`).
    Raises SetupError, naming the field, for a setting of another format than the input's."""
    source = config.source
    kind = source.format or detect_format(source_uri, source.extensions, source.recursive, s3)
    if kind != WEBDATASET and source.labels_key is not None:
        raise SetupError(f"`source.labels_key` applies to WebDataset shards; {source.uri} reads as {kind}")
    table_fields = [name for name in ("id_column", "labels_column") if getattr(source, name) is not None]
    if source.image_column != "image":
        table_fields.insert(0, "image_column")
    if kind != PARQUET and table_fields:
        raise SetupError(
            f"`source.{table_fields[0]}` applies to Parquet image tables, which are never guessed: set "
            f"`source.format: parquet` ({source.uri} reads as {kind})"
        )
    if source.format is None:
        logger.info("input %s read as %s (`source.format` not set)", source_uri, kind)
    return kind


def is_container_format(kind: str) -> bool:
    return kind != FILES


def _checked_first(chunk: pa.Table, config: JobConfig, s3: S3Settings) -> None:
    """A table whose first file lacks the named columns fails before any work, naming the setting; a first
    file that cannot be opened is left to become its error row."""
    source = config.source
    try:
        handle = open_random_access(str(chunk.column("uri")[0]), s3)
    except (OSError, ValueError):
        return
    try:
        schema = pq.read_schema(handle)
    except (OSError, pa.ArrowInvalid):
        return
    finally:
        handle.close()
    try:
        check_schema(schema, TableColumns(source.image_column, source.id_column, source.labels_column))
    except TableSchemaError as exc:
        raise SetupError(f"{exc} (first file {chunk.column('uri')[0]})") from exc


def stage_containers(
    config: JobConfig, run: OutputRun, progress: ListingProgress, source_uri: str, kind: str
) -> StagedContainers:
    """Lists the containers, leaves out what is done (and what earlier attempts of the run finished), and stages
    the rest as listing files; `progress` counts containers listed and skipped as done."""
    output = run.output
    s3 = output.s3
    history = ContainerHistory(output, config.model.name, config.fingerprint()) if config.sink.incremental else None
    resumed = progress.attempt > 1
    prior = prior_rows(output, progress.run_id) if resumed else None
    tallies = read_tallies(run.tallies_uri, s3, before=progress.attempt) if resumed else None

    def listed() -> Iterator[pa.Table]:
        limit = config.source.limit
        first = True
        for chunk in iter_containers(source_uri, kind, config.source.recursive, s3):
            if limit is not None:
                chunk = chunk.slice(0, max(0, limit - progress.listed))
            if first and chunk.num_rows and kind == PARQUET:
                _checked_first(chunk, config, s3)
            first = first and not chunk.num_rows
            progress.listed += chunk.num_rows
            yield chunk
            if limit is not None and progress.listed >= limit:
                break

    skipped = Skipped()
    entries = to_read(listed(), history, prior, tallies, skipped)
    staged = stage(run.listing_uri, run.tallies_uri, progress.attempt, entries, s3, kind)
    progress.skipped += skipped.done
    return staged
