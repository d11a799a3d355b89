"""Containers as inputs: which format an input is, how containers are listed (folders, brace patterns, manifests,
S3), and a container read with its rules (keys left out, keys once, its own failure last), local and on S3
through a store that breaks responses off."""

from __future__ import annotations

import io
import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from container_inputs import write_shard, write_table

from camray.io.container_samples import CONTAINER_KEY, Sample, sample_key, sample_uri
from camray.io.containers import (
    PARQUET,
    WEBDATASET,
    ContainerFormat,
    ContainerRead,
    detect_format,
    iter_containers,
    layout_path,
    read_container,
    read_images,
)
from camray.io.listing import iter_listing
from camray.io.sources import S3Settings

LOCAL = S3Settings()
SHARDS = ContainerFormat(WEBDATASET)


@pytest.fixture(scope="module")
def jpegs(small_photos) -> list[bytes]:
    return [path.read_bytes() for path in sorted(small_photos.iterdir())[:6]]


@pytest.fixture
def shards(jpegs, tmp_path):
    folder = tmp_path / "shards"
    for s in range(3):
        write_shard(folder / f"shard-{s:03d}.tar", {f"{s}-{i}": {"jpg": jpegs[i], "cls": str(i)} for i in range(2)})
    (folder / "README.txt").write_text("three shards")
    return folder


def _listed(uri: str, kind: str = WEBDATASET, s3: S3Settings = LOCAL) -> list[dict]:
    return [row for chunk in iter_containers(uri, kind, True, s3, chunk_rows=2) for row in chunk.to_pylist()]


def test_the_format_is_told_by_the_first_file_a_folder_or_manifest_names(shards, small_photos, tmp_path):
    extensions = [".jpg", ".png"]
    assert detect_format(str(shards), extensions, True, LOCAL) == WEBDATASET
    assert detect_format(str(shards / "shard-001.tar"), extensions, True, LOCAL) == WEBDATASET
    assert detect_format(f"{shards}/shard-{{000..002}}.tar", extensions, True, LOCAL) == WEBDATASET
    assert detect_format(str(small_photos), extensions, True, LOCAL) == "files"
    manifest = tmp_path / "shards.txt"
    manifest.write_text(f"# the shards\n{shards}/shard-002.tar\n")
    assert detect_format(str(manifest), extensions, True, LOCAL) == WEBDATASET
    (tmp_path / "tables").mkdir()
    write_table(tmp_path / "tables" / "t.parquet", [b"x"])
    assert detect_format(str(tmp_path / "tables"), extensions, True, LOCAL) == "files", "a table is never guessed"
    with pytest.raises(FileNotFoundError):
        detect_format(str(tmp_path / "nowhere"), extensions, True, LOCAL)


def test_containers_listed_from_a_folder_a_brace_pattern_and_a_manifest(shards, tmp_path):
    by_folder = _listed(str(shards))
    assert [row["uri"] for row in by_folder] == [str(shards / f"shard-{s:03d}.tar") for s in range(3)]
    assert all(row["size"] > 0 and row["version"] for row in by_folder)

    by_pattern = _listed(f"{shards}/shard-{{001..003}}.tar")
    assert by_pattern[:2] == by_folder[1:], "the pattern's names carry the folder listing's sizes and versions"
    assert by_pattern[2] == {"uri": str(shards / "shard-003.tar"), "size": -1, "version": ""}

    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{shards}/shard-002.tar\n{shards}/shard-000.tar\n")
    assert [row["uri"] for row in _listed(str(manifest))] == [
        str(shards / "shard-002.tar"),
        str(shards / "shard-000.tar"),
    ]


def test_a_parquet_file_named_with_format_parquet_is_a_table_not_a_manifest(tmp_path):
    table = write_table(tmp_path / "t.parquet", [b"x", b"y"])
    [row] = _listed(str(table), PARQUET)
    [listed] = next(iter_listing(str(tmp_path), [".parquet"], True, LOCAL)).to_pylist()
    assert row == {"uri": str(table), "size": listed["size"], "version": listed["version"]}


def _items(uri: str, fmt: ContainerFormat = SHARDS, **rules) -> tuple[list[tuple[str | None, str]], ContainerRead]:
    read = ContainerRead(uri)
    items = [
        (item.key, "ok" if isinstance(item, Sample) else item.error_type)
        for item in read_container(uri, fmt, LOCAL, read, **rules)
    ]
    return items, read


def test_keys_left_out_or_asked_for_and_counted(shards):
    uri = str(shards / "shard-001.tar")
    assert _items(uri)[0] == [("1-0", "ok"), ("1-1", "ok")]
    items, read = _items(uri, skip=frozenset({"1-0"}))
    assert items == [("1-1", "ok")] and (read.identities, read.emitted, read.left_out) == (2, 1, 1)
    items, read = _items(uri, only=frozenset())
    assert items == [] and (read.identities, read.emitted, read.left_out) == (2, 0, 2)


def test_a_key_met_again_is_read_once_and_named_in_the_containers_own_failure(jpegs, tmp_path):
    path = tmp_path / "repeated.tar"
    with tarfile.open(path, mode="w") as archive:
        for name in ("a.jpg", "b.jpg", "a.jpg", "c.jpg", "c.png"):
            info = tarfile.TarInfo(name)
            info.size = len(jpegs[0])
            archive.addfile(info, io.BytesIO(jpegs[0]))
    items, read = _items(str(path))
    assert items == [("a", "ok"), ("b", "ok"), ("c", "ok"), (None, "RepeatedKeys")]
    assert (read.identities, read.emitted) == (4, 4)
    own = list(read_container(str(path), SHARDS, LOCAL, ContainerRead(str(path))))[-1]
    assert "1 samples reuse a key" in own.message and "(a)" in own.message
    # Staged by an earlier attempt of the run: the container's own failure is not given out again.
    items, read = _items(str(path), skip=frozenset({CONTAINER_KEY}))
    assert items[-1] == ("c", "ok") and read.left_out == 1


def test_repeated_ids_of_a_table_are_the_files_failure(jpegs, tmp_path):
    table = write_table(tmp_path / "t.parquet", jpegs[:3], name=["x", "y", "x"])
    items, _ = _items(str(table), ContainerFormat(PARQUET, id_column="name"))
    assert items == [("x", "ok"), ("y", "ok"), (None, "RepeatedKeys")]


def test_a_container_that_cannot_be_read_is_one_failure_of_its_own(shards, tmp_path):
    assert _items(str(shards / "shard-009.tar"))[0] == [(None, "FileNotFoundError")]
    (tmp_path / "folder.tar").mkdir()
    assert _items(str(tmp_path / "folder.tar"))[0] == [(None, "IsADirectoryError")]
    os.mkfifo(tmp_path / "pipe.tar")
    assert _items(str(tmp_path / "pipe.tar"))[0] == [(None, "ValueError")]
    assert _items("http://example.com/shard.tar")[0] == [(None, "ValueError")]


def test_sample_uris_split_by_their_container_whatever_the_hashes():
    container = "s3://b/odd#name.tar"
    uri = sample_uri(container, "key#1")
    assert uri == "s3://b/odd#name.tar#key#1" and sample_key(container, uri) == "key#1"
    assert sample_uri(container, CONTAINER_KEY) == container and sample_key(container, container) == CONTAINER_KEY


def test_an_exports_path_follows_the_container_and_the_key():
    assert layout_path("s3://b/shards/shard-000.tar#train/001", "s3://b/shards/shard-000.tar") == (
        "b/shards/shard-000/train/001"
    )
    assert layout_path("/data/t/part-0.parquet#17", "/data/t/part-0.parquet") == "/data/t/part-0/17"
    assert layout_path("/data/s.tar#../../etc/x", "/data/s.tar") == "/data/s/etc/x", "a key cannot lead out"
    assert layout_path("s3://b/images/cat.jpg", None) == "b/images/cat"


@pytest.mark.integration
def test_a_shard_on_s3_is_read_in_one_stream_resumed_where_the_store_broke_it_off(s3_server, jpegs, tmp_path):
    import boto3

    from camray.bench.s3_proxy import FaultRates, FaultyS3Proxy

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="camray-containers")
    samples = {f"{i:03d}": {"jpg": jpegs[i % len(jpegs)], "cls": str(i)} for i in range(40)}
    shard = write_shard(tmp_path / "s.tar", samples)
    s3.put_object(Bucket="camray-containers", Key="shards/shard-000.tar", Body=shard.read_bytes())
    s3.put_object(Bucket="camray-containers", Key="shards/shard-001.tar", Body=shard.read_bytes())
    uri = "s3://camray-containers/shards/shard-000.tar"

    with FaultyS3Proxy(s3_server, seed=3, rates=FaultRates(slowdown=0, reset=0.5, delay=0), force_each=False) as proxy:
        settings = S3Settings(endpoint_url=proxy.endpoint)
        read = ContainerRead(uri)
        items = list(read_container(uri, SHARDS, settings, read))
        gets = [target for method, target, _ in proxy.log if method == "GET" and "shard-000" in target]
        resets = proxy.injected("GET")["reset"]
    assert [item.key for item in items] == list(samples) and all(isinstance(item, Sample) for item in items)
    assert [item.data for item in items[:6]] == jpegs
    assert resets > 0 and read.retries >= 1 and len(gets) == 1 + read.retries

    listed = _listed("s3://camray-containers/shards/shard-{000..002}.tar", s3=S3Settings())
    assert [(row["uri"].rsplit("/", 1)[-1], row["size"]) for row in listed] == [
        ("shard-000.tar", len(shard.read_bytes())),
        ("shard-001.tar", len(shard.read_bytes())),
        ("shard-002.tar", -1),
    ]
    assert read_images(uri, SHARDS, {"001", "003"}, S3Settings()) == {"001": jpegs[1], "003": jpegs[3]}


def test_read_images_stops_at_the_last_key_wanted(jpegs, tmp_path):
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image": pa.array(jpegs, pa.binary())}), table, row_group_size=2)
    assert read_images(str(table), ContainerFormat(PARQUET), {"1", "4"}, LOCAL) == {"1": jpegs[1], "4": jpegs[4]}
    assert read_images(str(table), ContainerFormat(PARQUET), {"99"}, LOCAL) == {}
