"""Class names and image-level labels.

A head's class names come from `model.labels`: a text file of one name a line, or a JSON list of names (`.json`),
local or `s3://`. Without one, a 1,000-way head takes ImageNet's names (or its zoo's), any other head `class_0`,
`class_1`, ... A file whose length differs from the head's is refused before any work.

An image's labels arrive as tokens, as the input gave them (`camray.io.listing`): a class name, or a class id
written in decimal. `LabelResolver` maps them onto the head's class ids, an exact name first, else a decimal id
inside the head. A token it cannot map (an unknown name, an id outside the head, a name two classes share) is
the image's error, never the run's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from camray.io.sources import S3Settings, filesystem_for

logger = logging.getLogger(__name__)


class UnknownLabel(ValueError):
    """An image-level label that names no class of the head; the message names the label."""


def read_labels(uri: str, s3: S3Settings) -> tuple[str, ...]:
    """The class names in a labels file: a JSON list (`.json`) or one name a line (trailing blank lines and a
    final newline dropped; `\\r\\n` line ends read alike). Raises ValueError naming `model.labels` for a file
    that is missing, unreadable or not a list of names."""
    try:
        fs, path = filesystem_for(uri, s3)
        with fs.open_input_stream(path) as stream:
            raw = stream.read()
    except (OSError, FileNotFoundError) as exc:
        raise ValueError(f"`model.labels` {uri} cannot be read: {exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"`model.labels` {uri} is not UTF-8 text: {exc}") from exc
    if uri.lower().endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"`model.labels` {uri} is not valid JSON: {exc}") from exc
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"`model.labels` {uri} must hold a JSON list of class names (strings)")
    else:
        names = text.replace("\r\n", "\n").split("\n")
        while names and not names[-1].strip():
            names.pop()
    empty = [index for index, name in enumerate(names) if not name.strip()]
    if empty:
        raise ValueError(f"`model.labels` {uri}: class {empty[0]} has an empty name")
    return tuple(names)


def class_names(
    num_classes: int, labels_uri: str | None, default: Sequence[str] | None, s3: S3Settings
) -> tuple[str, ...]:
    """The names of a head of `num_classes` outputs: the labels file's, else `default` where it has that many
    names (a model's published labels), else `class_0` ... with one warning. A file of another length is a
    ValueError naming both numbers."""
    if labels_uri:
        names = read_labels(labels_uri, s3)
        if len(names) != num_classes:
            raise ValueError(
                f"`model.labels` {labels_uri} holds {len(names)} class names, but the model's head has "
                f"{num_classes} outputs"
            )
        duplicated = sorted({name for name in names if names.count(name) > 1}) if len(set(names)) < len(names) else []
        if duplicated:
            logger.warning(
                "`model.labels` %s names %d classes more than once (%s): labels naming them must give the id",
                labels_uri,
                len(duplicated),
                ", ".join(repr(name) for name in duplicated[:5]),
            )
        return names
    if default is not None and len(default) == num_classes:
        return tuple(default)
    logger.warning(
        "the model's head has %d outputs and no `model.labels` names them: classes are called class_0 ... class_%d",
        num_classes,
        num_classes - 1,
    )
    return tuple(f"class_{index}" for index in range(num_classes))


@dataclass(frozen=True)
class LabelResolver:
    """Label tokens -> class ids of a head whose classes are `names` (see the module docstring)."""

    names: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)
    _shared: dict[str, list[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids: dict[str, int] = {}
        shared: dict[str, list[int]] = {}
        for index, name in enumerate(self.names):
            if name in ids:
                shared.setdefault(name, [ids[name]]).append(index)
            else:
                ids[name] = index
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_shared", shared)

    def class_id(self, token: str) -> int:
        """The class id `token` names; UnknownLabel naming it where it names none, or two."""
        if token in self._shared:
            ids = self._shared[token]
            raise UnknownLabel(
                f"label {token!r} names {len(ids)} classes of the model ({', '.join(map(str, ids))}): give its id"
            )
        if token in self._ids:
            return self._ids[token]
        text = token.strip()
        if text.isascii() and text.isdigit():
            index = int(text)
            if index < len(self.names):
                return index
            raise UnknownLabel(f"label {token!r} is no class id of the model's head (0 to {len(self.names) - 1})")
        raise UnknownLabel(f"label {token!r} is no class of the model (`model.labels`)")

    def class_ids(self, tokens: Iterable[str]) -> list[int]:
        """The distinct class ids `tokens` name, in the order first named."""
        return list(dict.fromkeys(self.class_id(str(token)) for token in tokens))
