"""WebDataset shards written by `webdataset` itself, read back sample by sample; damage inflicted on the bytes."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from container_inputs import member_offsets, write_shard

from camray.io.container_samples import Sample, SampleFailure
from camray.io.shards import iter_shard, split_member_name

IMAGES = [".jpg", ".jpeg", ".png"]


@pytest.fixture(scope="module")
def jpegs(small_photos) -> list[bytes]:
    return [path.read_bytes() for path in sorted(small_photos.iterdir())[:6]]


def _read(data: bytes, **options) -> list[Sample | SampleFailure]:
    return list(iter_shard(io.BufferedReader(io.BytesIO(data)), IMAGES, **options))


def _summary(items: list[Sample | SampleFailure]) -> list[tuple[str | None, str]]:
    return [(item.key, "ok" if isinstance(item, Sample) else item.error_type) for item in items]


def test_a_shards_samples_in_order_with_their_labels(jpegs, tmp_path):
    shard = write_shard(
        tmp_path / "s.tar",
        {
            "train/000": {"jpg": jpegs[0], "cls": "3"},
            "train/001": {"png": jpegs[1], "cls": "7\n12\n", "json": {"labels": ["tabby", 281]}},
            "train/002": {"txt": "a caption and no image"},
            "train/003": {"jpeg": jpegs[3]},
        },
    )
    items = _read(shard.read_bytes())
    assert _summary(items) == [("train/000", "ok"), ("train/001", "ok"), ("train/002", "NoImage"), ("train/003", "ok")]
    assert items[0].data == jpegs[0] and items[1].data == jpegs[1] and items[3].data == jpegs[3]
    assert [items[0].labels, items[1].labels, items[3].labels] == [["3"], ["7", "12"], None]
    assert ".txt" in items[2].message

    by_json = _read(shard.read_bytes(), labels_key="labels")
    assert [item.labels for item in by_json if isinstance(item, Sample)] == [None, ["tabby", "281"], None]


def test_labels_that_are_no_class_names_fail_their_sample_alone(jpegs, tmp_path):
    shard = write_shard(
        tmp_path / "s.tar",
        {
            "a": {"jpg": jpegs[0], "json": {"labels": {"nested": 1}}},
            "b": {"jpg": jpegs[1], "json": {"labels": 0.5}},
            "c": {"jpg": jpegs[2], "json": {"other": 1}},
        },
    )
    assert _summary(_read(shard.read_bytes(), labels_key="labels")) == [
        ("a", "BadLabels"),
        ("b", "BadLabels"),
        ("c", "ok"),
    ]


def test_member_names_split_as_webdataset_splits_them():
    assert split_member_name("dir/000123.seg.png") == ("dir/000123", "seg.png")
    assert split_member_name("a.b/c.jpg") == ("a.b/c", "jpg")
    assert split_member_name("README") is None and split_member_name(".hidden.jpg") is None


@pytest.fixture
def five(jpegs, tmp_path):
    shard = write_shard(tmp_path / "five.tar", {f"{i:03d}": {"jpg": jpegs[i], "cls": str(i)} for i in range(5)})
    return shard.read_bytes(), member_offsets(shard)


def test_a_shard_cut_inside_a_member_keeps_the_samples_before_it(five):
    data, offsets = five
    _, start = offsets["002.jpg"]
    items = _read(data[: start + 100])
    assert _summary(items) == [("000", "ok"), ("001", "ok"), ("002", "DamagedShard"), (None, "DamagedShard")]
    assert "unexpected end of data" in items[-1].message


@pytest.mark.parametrize("cut", ["boundary", "header"])
def test_a_shard_cut_between_members_fails_the_sample_it_may_have_cut(five, cut):
    data, offsets = five
    header, _ = offsets["003.cls"]
    items = _read(data[: header + (0 if cut == "boundary" else 100)])
    assert _summary(items) == [("000", "ok"), ("001", "ok"), ("002", "DamagedShard"), (None, "DamagedShard")]


def test_a_corrupt_header_ends_the_shard_with_its_error(five):
    data, offsets = five
    header, _ = offsets["003.cls"]
    damaged = bytearray(data)
    damaged[header + 10] ^= 0xFF  # the checksum no longer matches
    items = _read(bytes(damaged))
    assert _summary(items) == [("000", "ok"), ("001", "ok"), ("002", "DamagedShard"), (None, "DamagedShard")]
    assert "invalid header" in items[-1].message


def test_data_after_the_end_of_the_archive_is_named(five):
    data, _ = five
    assert _summary(_read(data + b"\0" * 4096)) == [(f"{i:03d}", "ok") for i in range(5)]
    items = _read(data + b"left over")
    assert _summary(items)[-1] == (None, "DamagedShard") and len(items) == 6


@pytest.mark.parametrize("data", [b"", b"shopping list: milk, eggs\n" * 40], ids=["empty", "text"])
def test_what_is_no_tar_is_one_failure_of_the_shard(data):
    assert _summary(_read(data)) == [(None, "UnreadableShard")]


def test_a_member_over_the_limit_is_not_read(tmp_path):
    shard = write_shard(tmp_path / "s.tar", {"a": {"jpg": b"y" * 500}, "b": {"jpg": b"x" * 5000}})
    assert _summary(_read(shard.read_bytes(), max_member_bytes=1000)) == [("a", "ok"), ("b", "MemberTooLarge")]


def test_a_member_twice_in_one_sample_fails_it(jpegs):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, data in (("a.jpg", jpegs[0]), ("a.jpg", jpegs[1]), ("b.jpg", jpegs[2]), ("b.json", b"[]")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    items = _read(out.getvalue(), labels_key="labels")
    assert _summary(items) == [("a", "DuplicateMember"), ("b", "BadLabels")]
    assert json.loads(b"[]") == [] and "object" in items[1].message


def test_a_shard_compressed_whole_is_read_and_its_cut_said(five):
    import gzip

    data, _ = five
    packed = gzip.compress(data)
    assert _summary(_read(packed)) == [(f"{i:03d}", "ok") for i in range(5)]
    cut = _summary(_read(packed[: len(packed) // 2]))
    assert cut[0] == ("000", "ok") and cut[-1] == (None, "DamagedShard")
