"""Shards and tables written by the reference writers, offline: WebDataset's `TarWriter` and Hugging Face
`datasets`' `to_parquet`, from real photos; and the damage the bad-input tests inflict on them."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # no hub: the tests write tables, never fetch them


def write_shard(path: Path, samples: dict[str, dict[str, object]]) -> Path:
    """A `.tar` shard of `samples` (key -> {suffix: bytes | str | int | dict}), written by `webdataset`."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as writer:
        for key, members in samples.items():
            writer.write({"__key__": key, **members})
    return path


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Member name -> (offset of its header, offset of its data), as the tar holds them."""
    with tarfile.open(path) as archive:
        return {member.name: (member.offset, member.offset_data) for member in archive.getmembers()}


def write_table(path: Path, images: list[bytes | None], labels: list[object] | None = None, **columns) -> Path:
    """A Parquet image table in the `datasets` layout (`image`: {bytes, path}; `label`: a ClassLabel of ids)."""
    from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value

    data: dict[str, list] = {"image": [None if item is None else {"bytes": item, "path": None} for item in images]}
    features = {"image": Image()}
    if labels is not None:
        data["label"] = labels
        features["label"] = ClassLabel(num_classes=1000)
    for name, values in columns.items():
        data[name] = values
        first = next(value for value in values if value is not None)
        features[name] = Sequence(Value("string")) if isinstance(first, list) else Value("string")
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(data, features=Features(features)).to_parquet(str(path))
    return path


def jpeg(data: bytes, side: int = 96) -> bytes:
    """`data` (an image) as a small JPEG."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()
