"""The read stages of a run over WebDataset shards or Parquet image tables: listing files of containers ->
samples' bytes (read tasks) -> decoded canvases (decode tasks), each failure an error row saying why.

The read task streams its containers (`camray.io.containers.read_container`) and gives out their samples' bytes
in blocks of `decode_batch_size`, never a container whole; decoding runs in tasks of its own, as many as the CPUs
allow, so that one large shard or a few keep every CPU decoding while many small ones are read side by side.
The decode task's rows are the single-file read stage's (`camray.reader`), with the sample's `container_uri`
and `labels` besides, so the predictor and the sink take both alike.

Why not Ray Data's `read_webdataset` and `read_parquet`: the runner's listing decides what to read (containers
skipped without a GET, samples left out by key), a sample's URI and version come from that listing, a row's
position in its file names it where a table has no id, and a damaged tar or a corrupt file must become error
rows after the samples read before the damage, where those readers fail the task (docs/datasets.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.extensions import ArrowTensorArray

from camray.config import JobConfig
from camray.image.decode import DecodedImage, DecodeError, DecodeLimits, ProbedImage, decode_image, probe_image
from camray.io import layout
from camray.io.container_samples import Sample, sample_uri
from camray.io.container_staging import StagedContainers, write_tally
from camray.io.containers import ContainerFormat, ContainerRead, read_container
from camray.io.sources import S3Settings, filesystem_for, join_uri

logger = logging.getLogger(__name__)

# The samples' bytes between the read and the decode tasks.
RAW = pa.schema(
    [
        ("image_uri", pa.string()),
        ("source_version", pa.string()),
        ("container_uri", pa.string()),
        ("data", pa.binary()),
        ("labels", pa.list_(pa.string())),
        ("error_stage", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        ("io_retries", pa.int64()),
    ]
)
# A block of samples' bytes is given out at `decode_batch_size` samples or at this many bytes, whichever first.
RAW_BLOCK_BYTES = 64 << 20
# Read tasks at once per CPU of the cluster (they hold no CPU: they wait on the store and parse tar headers).
READ_TASKS_PER_CPU = 0.5


def container_format(config: JobConfig, kind: str) -> ContainerFormat:
    source = config.source
    return ContainerFormat(
        kind=kind,
        image_suffixes=tuple(source.extensions),
        labels_key=source.labels_key,
        image_column=source.image_column,
        id_column=source.id_column,
        labels_column=source.labels_column,
        max_member_bytes=DecodeLimits().max_bytes,
    )


class _RawRows:
    """Rows of `RAW` being gathered for one block."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {}
        self.bytes = 0
        self._clear()

    def _clear(self) -> None:
        self.columns = {name: [] for name in RAW.names}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.columns["image_uri"])

    def add(self, container: str, version: str, item: Any, retries: int) -> None:
        key = item.key if item.key is not None else ""
        row = {
            "image_uri": sample_uri(container, key),
            "source_version": version,
            "container_uri": container,
            "data": item.data if isinstance(item, Sample) else None,
            "labels": item.labels if isinstance(item, Sample) else None,
            "error_stage": "" if isinstance(item, Sample) else "read",
            "error_type": "" if isinstance(item, Sample) else item.error_type,
            "error_message": "" if isinstance(item, Sample) else item.message,
            "io_retries": retries,
        }
        for name, value in row.items():
            self.columns[name].append(value)
        self.bytes += len(row["data"] or b"")

    def take(self) -> pa.Table:
        table = pa.table(self.columns, schema=RAW)
        self._clear()
        return table


def read_containers(
    batch: dict[str, np.ndarray], *, fmt: dict[str, Any], s3: dict[str, Any], block_rows: int, attempt: int
) -> Iterator[pa.Table]:
    """Ray Data task over listing files of containers (`listing`, each with its `tally` URI): the samples of
    each container left to read as `RAW` blocks of at most `block_rows`; then the tally of what it gave out.

    Raises `StoreUnavailableError` when the store fails a read after every attempt (the run's failure)."""
    settings = S3Settings(**s3)
    form = ContainerFormat(**{**fmt, "image_suffixes": tuple(fmt["image_suffixes"])})
    rows = _RawRows()
    for listing_uri, tally_uri in zip(batch["listing"], batch["tally"], strict=True):
        fs, path = filesystem_for(str(listing_uri), settings)
        tally: list[tuple[str, int]] = []
        for entry in pq.read_table(path, filesystem=fs).to_pylist():
            container, version = entry["uri"], entry["version"]
            read = ContainerRead(container)
            only = None if entry["only_keys"] is None else frozenset(entry["only_keys"])
            counted = 0
            for item in read_container(container, form, settings, read, frozenset(entry["skip_keys"] or ()), only):
                rows.add(container, version, item, read.retries - counted)
                counted = read.retries
                if len(rows) >= block_rows or rows.bytes >= RAW_BLOCK_BYTES:
                    yield rows.take()
            tally.append((container, read.emitted))
        if len(rows):
            yield rows.take()
        write_tally(str(tally_uri), tally, attempt, settings)


def decode_samples(
    batch: pa.Table,
    *,
    input_size: int,
    policy: str,
    limits: dict[str, Any],
    decode: str = "cpu",
    interpolation: str = "bilinear",
) -> pa.Table:
    """Ray Data task: `RAW` rows -> the read stage's decoded rows (`camray.reader.read_decode_batch`'s columns),
    with `container_uri` and `labels`; a sample that does not decode becomes an error row (stage `decode`)."""
    decode_limits = DecodeLimits(**limits)
    n = batch.num_rows
    datas = batch.column("data").to_pylist()
    stage = batch.column("error_stage").to_pylist()
    error_type = batch.column("error_type").to_pylist()
    message = batch.column("error_message").to_pylist()
    sha = [""] * n
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    device = decode == "device"
    if device:
        encoded: list[bytes] = [b""] * n
        orientation = np.ones(n, dtype=np.int8)
        device_jpeg = np.zeros(n, dtype=bool)
    else:
        valid_width = np.zeros(n, dtype=np.int32)
        valid_height = np.zeros(n, dtype=np.int32)
        pixels = np.zeros((n, input_size, input_size, 3), dtype=np.uint8)
    for i, data in enumerate(datas):
        if error_type[i]:
            continue
        sha[i] = hashlib.sha256(data).hexdigest()
        decoded = (
            probe_image(data, decode_limits)
            if device
            else decode_image(data, input_size, policy, decode_limits, interpolation)
        )
        if isinstance(decoded, DecodeError):
            stage[i], error_type[i], message[i] = "decode", decoded.error_type, decoded.message
            continue
        width[i], height[i] = decoded.width, decoded.height
        if isinstance(decoded, ProbedImage):
            encoded[i], orientation[i], device_jpeg[i] = data, decoded.orientation, decoded.jpeg_rgb_or_gray
            continue
        assert isinstance(decoded, DecodedImage)
        valid_width[i], valid_height[i] = decoded.valid_width, decoded.valid_height
        pixels[i] = decoded.pixels
    columns: dict[str, Any] = {
        "image_uri": batch.column("image_uri"),
        "source_version": batch.column("source_version"),
        "container_uri": batch.column("container_uri"),
        "labels": batch.column("labels"),
        "content_sha256": pa.array(sha, pa.string()),
        "width": pa.array(width),
        "height": pa.array(height),
        "error_stage": pa.array(stage, pa.string()),
        "error_type": pa.array(error_type, pa.string()),
        "error_message": pa.array(message, pa.string()),
        "io_retries": batch.column("io_retries"),
    }
    if device:
        columns.update(
            encoded=pa.array(encoded, pa.binary()), orientation=pa.array(orientation), device_jpeg=pa.array(device_jpeg)
        )
    else:
        columns.update(
            valid_width=pa.array(valid_width),
            valid_height=pa.array(valid_height),
            pixels=ArrowTensorArray.from_numpy(pixels),
        )
    return pa.table(columns)


def read_stages(
    config: JobConfig,
    staged: StagedContainers,
    fmt: ContainerFormat,
    s3: S3Settings,
    canvas_side: int,
    interpolation: str,
    decode: str,
) -> ray.data.Dataset:
    """The dataset of decoded samples for the predictor: read tasks over the staged listing files, then decode
    tasks, each of `runtime.decode_cpus` (the read tasks hold none, and so are never fused with them). `decode` is
    `runtime.decode` resolved for the cluster (`cpu` or `device`)."""
    listing_files = [
        {"listing": join_uri(staged.uri, layout.listing_file_name(index)), "tally": staged.tally_uri(index)}
        for index in range(staged.files)
    ]
    cpus = ray.cluster_resources().get("CPU", 1.0)
    ds = ray.data.from_items(listing_files, override_num_blocks=staged.files)
    ds = ds.map_batches(
        read_containers,
        batch_size=1,
        fn_kwargs={
            "fmt": dataclasses.asdict(fmt),
            "s3": dataclasses.asdict(s3),
            "block_rows": config.runtime.decode_batch_size,
            "attempt": staged.attempt,
        },
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=max(1, min(staged.files, math.ceil(cpus * READ_TASKS_PER_CPU)))),
    )
    return ds.map_batches(
        decode_samples,
        batch_size=config.runtime.decode_batch_size,
        batch_format="pyarrow",
        fn_kwargs={
            "input_size": canvas_side,
            "policy": config.model.resize,
            "limits": DecodeLimits().__dict__,
            "decode": decode,
            "interpolation": interpolation,
        },
        num_cpus=config.runtime.decode_cpus,
    )
