"""The samples inside a container (a WebDataset shard, a Parquet image table): what a reader of either yields,
and how a sample is named.

A sample's URI is `CONTAINER_URI#KEY`: the shard's URI and the sample's key (the member names' common stem), or
the table file's URI and the row's id. A `#` may occur in an S3 key and in a sample key alike, so the URI alone
cannot be split: rows carry their container in a column of its own (`container_uri`), and the key is what
follows `container_uri + "#"`. A failure that names no sample (a shard that cannot be opened, damage before any
key could be read) is the container's own, and its row's `image_uri` is the container's URI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SEPARATOR = "#"
# The key under which a container's own failure is remembered among sample keys (no sample key is empty).
CONTAINER_KEY = ""


@dataclass(frozen=True)
class Sample:
    """One image of a container: its key, its encoded bytes, and its labels as given (None: it carries none)."""

    key: str
    data: bytes
    labels: list[str] | None = None


@dataclass(frozen=True)
class SampleFailure:
    """What could not be read: one sample (`key`), or, with `key` None, the container itself from some point on.

    `stage` is `read` for what the container holds (damage, a member or row without an image, bad labels)."""

    key: str | None
    error_type: str
    message: str


def sample_uri(container_uri: str, key: str) -> str:
    """`CONTAINER_URI#KEY`; the container's own URI for its own failures (`CONTAINER_KEY`)."""
    return container_uri if key == CONTAINER_KEY else f"{container_uri}{SEPARATOR}{key}"


def sample_key(container_uri: str, uri: str) -> str:
    """The key of `uri` (a `sample_uri` of `container_uri`); `CONTAINER_KEY` for the container's own row."""
    if uri == container_uri:
        return CONTAINER_KEY
    prefix = container_uri + SEPARATOR
    if not uri.startswith(prefix):
        raise ValueError(f"{uri!r} is not a sample of {container_uri!r}")
    return uri[len(prefix) :]


class LabelsError(ValueError):
    """A labels value that is no class name, id or list of them."""


def label_tokens(value: Any) -> list[str] | None:
    """Labels as given -> tokens: a name or an id becomes one token (ids in decimal), a list one token each;
    None stays None. Raises LabelsError for anything else (a float, a mapping, a boolean)."""
    if value is None:
        return None
    values = value if isinstance(value, list | tuple) else [value]
    tokens = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise LabelsError(f"{json.dumps(value, default=str)[:200]} is not a class name, id or list of them")
        token = str(item).strip()
        if token:
            tokens.append(token)
    return tokens
