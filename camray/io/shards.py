"""WebDataset shards: a `.tar` read front to back as a stream of samples, with what cannot be read said.

A sample is the run of consecutive members that share a key: the member's path up to the first dot of its file
name (`train/000123.jpg` and `train/000123.cls` are sample `train/000123`), WebDataset's own rule. Its image is
the member whose suffix is one of `image_suffixes` (the first of them it has, in that order); its labels come
from the `.json` member's `labels_key`, or else from a `.cls` member (one class id a line). Other members are
skipped unread, as are names without a dot, directories and links.

Memory: the tar is read as a stream (`tarfile`'s stream mode over the caller's file), and a sample's wanted
members are held until its last member is read; nothing else is kept but the keys seen so far. A member over
`max_member_bytes` is not read: its sample fails.

Damage: Python's `tarfile` ends an archive quietly at a header it cannot parse, and at the end of the data with
no end-of-archive marker; both mean a shard cut short or corrupt. So how the archive ended is watched: after
the end-of-archive marker, the shard is done (anything but zeros after it is damage); otherwise the sample being
read fails, and the rest of the shard, which cannot be read, is a failure of the shard itself (`key` None).
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from camray.io.container_samples import LabelsError, Sample, SampleFailure, label_tokens

logger = logging.getLogger(__name__)

# WebDataset's split of a member name into key and suffix: the directories, then the file name up to its first dot.
_KEY_AND_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# The header errors that end `tarfile`'s iteration, and what each says about how the shard ended.
_ENDINGS = {
    tarfile.EOFHeaderError: "marker",  # a zero block: the end-of-archive marker
    tarfile.EmptyHeaderError: "cut at a member boundary (no end-of-archive marker)",
    tarfile.TruncatedHeaderError: "cut inside a header",
    tarfile.InvalidHeaderError: "an invalid header",
}
_TRAILER_READ = 1 << 20


class _WatchedHeader(tarfile.TarInfo):
    """Records on the archive how its iteration ended, which `tarfile` otherwise keeps to itself."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as exc:
            archive.camray_ending = _ENDINGS.get(type(exc), str(exc))  # type: ignore[attr-defined]
            raise


def split_member_name(name: str) -> tuple[str, str] | None:
    """`dir/000123.seg.png` -> (`dir/000123`, `seg.png`); None for a name without a suffix."""
    match = _KEY_AND_SUFFIX.match(name)
    return (match.group(1), match.group(2)) if match else None


class _Group:
    """The members of the sample being read."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.members: dict[str, bytes] = {}
        self.suffixes: list[str] = []
        self.problem: SampleFailure | None = None

    def fail(self, error_type: str, message: str) -> None:
        if self.problem is None:
            self.problem = SampleFailure(self.key, error_type, message)


def iter_shard(
    stream: BinaryIO,
    image_suffixes: list[str],
    labels_key: str | None = None,
    max_member_bytes: int = 200 << 20,
) -> Iterator[Sample | SampleFailure]:
    """The shard's samples, in order, each a `Sample` or a `SampleFailure`; failures of the shard itself (it
    cannot be opened, or the rest of it cannot be read) come last, with `key` None.

    `image_suffixes` are dotted and lower case (`.jpg`), as `source.extensions` holds them."""
    wanted_images = [suffix.lstrip(".") for suffix in image_suffixes]
    try:
        archive = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_WatchedHeader)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError):
            raise  # the store or the disk, not the shard's content: the caller's to classify
        yield SampleFailure(None, "UnreadableShard", f"not a readable tar archive: {exc}")
        return
    group: _Group | None = None
    try:
        for member in archive:
            if not member.isreg():
                continue
            parts = split_member_name(member.name)
            if parts is None:
                logger.debug("member %s has no suffix: no sample's", member.name)
                continue
            key, suffix = parts
            if group is None or key != group.key:
                if group is not None:
                    yield _finished(group, wanted_images, labels_key)
                group = _Group(key)
            if suffix in group.suffixes:
                group.fail("DuplicateMember", f"member {member.name} appears twice in the sample")
                continue
            group.suffixes.append(suffix)
            if not _wanted(suffix, wanted_images, labels_key):
                continue
            if member.size > max_member_bytes:
                group.fail("MemberTooLarge", f"member {member.name} is {member.size} bytes, over {max_member_bytes}")
                continue
            handle = archive.extractfile(member)
            group.members[suffix] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        offset = archive.offset
        if group is not None:
            yield SampleFailure(group.key, "DamagedShard", f"the shard is damaged inside this sample: {exc}")
        yield SampleFailure(None, "DamagedShard", f"the shard cannot be read after byte {offset}: {exc}")
        return
    ending = getattr(archive, "camray_ending", "marker")
    if ending == "marker":
        trailing = _trailing_data(archive)
        if group is not None:
            yield _finished(group, wanted_images, labels_key)
        if trailing is not None:
            yield SampleFailure(
                None, "DamagedShard", f"data after the end-of-archive marker at byte {archive.offset + trailing}"
            )
        return
    if group is not None:
        yield SampleFailure(group.key, "DamagedShard", f"the shard ends ({ending}) inside or after this sample")
    yield SampleFailure(None, "DamagedShard", f"the shard cannot be read after byte {archive.offset}: {ending}")


def _wanted(suffix: str, images: list[str], labels_key: str | None) -> bool:
    lower = suffix.lower()
    return lower in images or lower == "cls" or (labels_key is not None and lower == "json")


def _trailing_data(archive: tarfile.TarFile) -> int | None:
    """How far past the end-of-archive marker the first byte other than zero is; None when there is none. Read
    through the archive's own stream, which holds what it buffered (and decompresses a compressed shard)."""
    position = 0
    try:
        while block := archive.fileobj.read(_TRAILER_READ):
            stripped = block.lstrip(b"\0")
            if stripped:
                return position + len(block) - len(stripped)
            position += len(block)
    except (tarfile.TarError, EOFError, zlib.error):
        return position
    return None


def _finished(group: _Group, images: list[str], labels_key: str | None) -> Sample | SampleFailure:
    if group.problem is not None:
        return group.problem
    by_suffix = {suffix.lower(): data for suffix, data in group.members.items()}
    image = next((suffix for suffix in images if suffix in by_suffix), None)
    if image is None:
        members = ", ".join(f".{suffix}" for suffix in group.suffixes)
        return SampleFailure(group.key, "NoImage", f"the sample has no image member (members: {members})")
    try:
        labels = _labels(by_suffix, labels_key)
    except LabelsError as exc:
        return SampleFailure(group.key, "BadLabels", str(exc))
    return Sample(group.key, by_suffix[image], labels)


def _labels(members: dict[str, bytes], labels_key: str | None) -> list[str] | None:
    if labels_key is not None:
        if "json" not in members:
            return None
        try:
            document = json.loads(members["json"])
        except (UnicodeDecodeError, ValueError) as exc:
            raise LabelsError(f".json is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise LabelsError(f".json holds a {type(document).__name__}, not an object with `{labels_key}`")
        try:
            return label_tokens(document.get(labels_key))
        except LabelsError as exc:
            raise LabelsError(f".json `{labels_key}`: {exc}") from exc
    if "cls" not in members:
        return None
    try:
        text = members["cls"].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelsError(f".cls is not text: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]
