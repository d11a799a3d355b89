"""The read and decode tasks of shards and tables, called as Ray Data calls them (plain functions over batches),
against the single-file read stage they must match column for column."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from container_inputs import member_offsets, write_shard, write_table

from camray.container_reader import RAW, decode_samples, read_containers
from camray.image.decode import DecodeLimits
from camray.io.container_done import TO_READ
from camray.io.container_staging import read_tallies
from camray.io.containers import PARQUET, WEBDATASET, ContainerFormat
from camray.io.layout import tally_file_name
from camray.io.sources import S3Settings
from camray.reader import read_decode_batch

S3 = dataclasses.asdict(S3Settings())
DECODE = {"input_size": 64, "policy": "letterbox", "limits": DecodeLimits().__dict__}


@pytest.fixture(scope="module")
def jpegs(small_photos) -> list[bytes]:
    return [path.read_bytes() for path in sorted(small_photos.iterdir())[:8]]


def _stage(path, entries: list[dict]) -> str:
    rows = [{"only_keys": None, "skip_keys": [], "size": 1, "version": "v1", **entry} for entry in entries]
    pq.write_table(pa.Table.from_pylist(rows, schema=TO_READ), path)
    return str(path)


def _read(listing: str, tally: str, fmt: ContainerFormat, block_rows: int = 3) -> pa.Table:
    batch = {"listing": np.array([listing], dtype=object), "tally": np.array([tally], dtype=object)}
    blocks = list(read_containers(batch, fmt=dataclasses.asdict(fmt), s3=S3, block_rows=block_rows, attempt=1))
    assert all(block.schema == RAW and block.num_rows <= block_rows for block in blocks)
    return pa.concat_tables(blocks)


def test_shards_to_decoded_rows_with_every_failure_named(jpegs, tmp_path):
    good = write_shard(tmp_path / "good.tar", {f"{i}": {"jpg": jpegs[i], "cls": str(280 + i)} for i in range(4)})
    bad_image = write_shard(tmp_path / "bad-image.tar", {"a": {"jpg": jpegs[4]}, "b": {"jpg": b"\xff\xd8 not a jpeg"}})
    cut = write_shard(tmp_path / "cut.tar", {f"{i}": {"jpg": jpegs[i]} for i in range(3)})
    cut.write_bytes(cut.read_bytes()[: member_offsets(cut)["2.jpg"][1] + 50])
    (tmp_path / "notes.tar").write_text("not a tar at all")
    listing = _stage(
        tmp_path / "part-00000.parquet",
        [
            {"uri": str(good), "skip_keys": ["1"]},
            {"uri": str(bad_image)},
            {"uri": str(cut), "only_keys": ["1", "2"]},
            {"uri": str(tmp_path / "notes.tar")},
        ],
    )
    tallies = tmp_path / "tallies"
    raw = _read(listing, str(tallies / tally_file_name(1, 0)), ContainerFormat(WEBDATASET))
    assert raw.column("image_uri").to_pylist() == [
        f"{good}#0",
        f"{good}#2",
        f"{good}#3",
        f"{bad_image}#a",
        f"{bad_image}#b",
        f"{cut}#1",
        f"{cut}#2",
        str(cut),
        str(tmp_path / "notes.tar"),
    ]
    assert raw.column("labels").to_pylist()[:4] == [["280"], ["282"], ["283"], None]
    assert raw.column("container_uri").to_pylist()[0] == str(good)

    rows = decode_samples(raw, **DECODE).to_pylist()
    outcome = [(row["error_stage"], row["error_type"]) for row in rows]
    assert outcome == [("", "")] * 4 + [
        ("decode", "UnidentifiedImageError"),
        ("", ""),
        ("read", "DamagedShard"),
        ("read", "DamagedShard"),
        ("read", "UnreadableShard"),
    ]
    assert rows[0]["width"] > 0 and len(rows[0]["content_sha256"]) == 64 and rows[7]["content_sha256"] == ""

    written = read_tallies(str(tallies), S3Settings(), attempt=1).to_pylist()
    assert {row["index"] for row in written} == {0}
    assert [(row["container_uri"], row["emitted"]) for row in written] == [
        (str(good), 3),
        (str(bad_image), 2),
        (str(cut), 3),
        (str(tmp_path / "notes.tar"), 1),
    ]


def test_a_decoded_sample_has_the_columns_a_decoded_file_has(jpegs, tmp_path):
    table = write_table(tmp_path / "t.parquet", [jpegs[0], None], labels=[281, 282])
    listing = _stage(tmp_path / "listing.parquet", [{"uri": str(table)}])
    fmt = ContainerFormat(PARQUET, labels_column="label")
    sample = decode_samples(_read(listing, str(tmp_path / "tally.parquet"), fmt), **DECODE)
    (tmp_path / "cat.jpg").write_bytes(jpegs[0])
    single = read_decode_batch(
        {"uri": np.array([str(tmp_path / "cat.jpg")], dtype=object), "version": np.array(["v"], dtype=object)},
        s3=S3,
        **DECODE,
    )
    assert set(sample.column_names) == set(single) | {"container_uri", "labels"}
    pixels = sample.column("pixels").chunk(0).to_numpy()
    assert pixels.shape == (2, 64, 64, 3) and np.array_equal(pixels[0], single["pixels"][0])
    first, second = sample.to_pylist()
    assert (first["width"], first["height"]) == (single["width"][0], single["height"][0])
    assert first["labels"] == ["281"] and second["error_type"] == "NoImage" and second["error_stage"] == "read"


def test_device_decoding_hands_the_bytes_on_as_single_files_do(jpegs, tmp_path):
    shard = write_shard(tmp_path / "s.tar", {"a": {"jpg": jpegs[0]}, "b": {"png": b"\x89PNG not really"}})
    listing = _stage(tmp_path / "listing.parquet", [{"uri": str(shard)}])
    raw = _read(listing, str(tmp_path / "tally.parquet"), ContainerFormat(WEBDATASET))
    sample = decode_samples(raw, **DECODE, decode="device")
    (tmp_path / "a.jpg").write_bytes(jpegs[0])
    single = read_decode_batch(
        {"uri": np.array([str(tmp_path / "a.jpg")], dtype=object), "version": np.array(["v"], dtype=object)},
        s3=S3,
        decode="device",
        **DECODE,
    )
    assert set(sample.column_names) == set(single) | {"container_uri", "labels"}
    first, second = sample.to_pylist()
    assert first["encoded"] == jpegs[0] and first["device_jpeg"] == bool(single["device_jpeg"][0])
    assert first["orientation"] == single["orientation"][0] and second["error_stage"] == "decode"
