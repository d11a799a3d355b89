"""The streamed listing: chunks of bounded size from manifests, local trees and S3 pages, with versions that
match what earlier releases recorded (pyarrow's file info), so incremental runs keep recognising done inputs."""

from __future__ import annotations

from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest

from camray.io.listing import LISTING, iter_listing
from camray.io.sources import S3Settings, filesystem_for


def test_a_large_manifest_streams_in_chunks(tmp_path):
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"s3://b/img-{i:05d}.jpg\n" for i in range(10_500)))
    chunks = list(iter_listing(str(manifest), [], True, S3Settings(), chunk_rows=1000))
    assert [chunk.num_rows for chunk in chunks] == [1000] * 10 + [500]
    assert all(chunk.schema.equals(LISTING) for chunk in chunks)
    assert (
        chunks[0].column("uri")[0].as_py() == "s3://b/img-00000.jpg" and chunks[-1].column("version")[0].as_py() == ""
    )


def test_a_local_tree_streams_with_pyarrow_versions(tmp_path):
    for folder in range(3):
        (tmp_path / f"d{folder}").mkdir()
        for index in range(7):
            (tmp_path / f"d{folder}" / f"{index}.jpg").write_bytes(b"x" * index)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "skip.jpg").write_bytes(b"x")
    chunks = list(iter_listing(str(tmp_path), [".jpg"], True, S3Settings(), chunk_rows=5))
    assert max(chunk.num_rows for chunk in chunks) == 5 and sum(chunk.num_rows for chunk in chunks) == 21
    listed = {row["uri"]: row["version"] for chunk in chunks for row in chunk.to_pylist()}
    fs = pafs.LocalFileSystem()
    for info in fs.get_file_info(pafs.FileSelector(str(tmp_path / "d1"))):
        assert listed[info.path] == f"{info.size}-{info.mtime_ns}"


@pytest.mark.integration
def test_an_s3_prefix_pages_through_more_than_a_thousand_keys(s3_server):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="camray-listing")
    for index in range(1_203):
        s3.put_object(Bucket="camray-listing", Key=f"in/{index:05d}.jpg", Body=b"x" * (index % 7))
    s3.put_object(Bucket="camray-listing", Key="in/notes.md", Body=b"x")
    chunks = list(iter_listing("s3://camray-listing/in", [".jpg"], True, S3Settings(), chunk_rows=500))
    assert [chunk.num_rows for chunk in chunks] == [500, 500, 203]
    listed = {row["uri"]: row["version"] for chunk in chunks for row in chunk.to_pylist()}
    fs, path = filesystem_for("s3://camray-listing/in", S3Settings())
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))[:50]:
        if info.path.endswith(".jpg"):
            assert listed[f"s3://{info.path}"] == f"{info.size}-{info.mtime_ns}"


def test_a_missing_input_fails_before_any_chunk(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        next(iter_listing(str(tmp_path / "nope"), [], True, S3Settings()))


def _refused(argv: list[str], capfd) -> tuple[int, list[str]]:
    from camray import cli

    status = cli.main(argv)
    return status, capfd.readouterr().err.strip().splitlines()


def test_a_missing_folder_is_refused_before_the_lease_in_one_line(tmp_path, capfd):
    """Exit 2 and one line naming the folder and the nearest one that exists; no lease taken, nothing written to
    the output; the traceback only with --verbose."""
    missing = tmp_path / "photos" / "2026"
    out = tmp_path / "out"
    status, lines = _refused(["--input", str(missing), "--output", str(out)], capfd)
    assert status == 2 and lines == [
        f"camray: input {missing} does not exist: no file or folder {missing} (the nearest folder is {tmp_path})"
    ]
    assert not out.exists()
    status, lines = _refused(["--input", str(missing), "--output", str(out), "--verbose"], capfd)
    assert status == 2 and lines[0] == "Traceback (most recent call last):" and lines[-1].startswith("camray: input")


@pytest.mark.integration
def test_a_missing_bucket_or_prefix_is_refused_before_the_lease_in_one_line(s3_server, tmp_path, capfd):
    boto3.client("s3").create_bucket(Bucket="camray-there")
    boto3.client("s3").put_object(Bucket="camray-there", Key="images/a.jpg", Body=b"x")
    out = "s3://camray-there/out"
    status, lines = _refused(["--input", "s3://no-such-bucket-here/images/", "--output", out], capfd)
    assert status == 2 and lines == [
        f"camray: input s3://no-such-bucket-here/images/ does not exist: there is no bucket `no-such-bucket-here` "
        f"on {s3_server}"
    ]
    status, lines = _refused(["--input", "s3://camray-there/imgs/", "--output", out], capfd)
    assert status == 2 and lines == [
        f"camray: input s3://camray-there/imgs/ does not exist: bucket `camray-there` on {s3_server} holds no "
        "object at or under `imgs`"
    ]
    # Neither took the lease nor wrote a runs row: the output holds nothing.
    assert boto3.client("s3").list_objects_v2(Bucket="camray-there", Prefix="out/")["KeyCount"] == 0


def test_manifests_carry_labels_and_versions_and_folders_label_by_sub_folder(tmp_path):
    """CSV (`|`-separated), JSON Lines and Parquet (lists of names or ids) give each entry its labels as text, null
    where it has none; a `version` column makes entries comparable across runs; an ImageFolder layout labels each
    image by its first sub-folder."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    csv = tmp_path / "m.csv"
    csv.write_text("uri,labels,version\n/x/a.jpg,cat | 007,v1\n/x/b.jpg,,\n")
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        json.dumps({"uri": "/x/a.jpg", "labels": ["cat", 7], "version": "v2"}) + '\n\n{"uri": "/x/b.jpg"}\n'
    )
    parquet = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": ["/x/a.jpg", "/x/b.jpg"], "labels": [[3, 12], None]}), parquet)
    plain = tmp_path / "m.txt"
    plain.write_text("/x/a.jpg\n")

    def listed(uri, **options):
        return [row for chunk in iter_listing(str(uri), [], True, S3Settings(), **options) for row in chunk.to_pylist()]

    assert [(r["version"], r["labels"]) for r in listed(csv)] == [("v1", ["cat", "007"]), ("", [])]
    assert [(r["version"], r["labels"]) for r in listed(jsonl)] == [("v2", ["cat", "7"]), ("", None)]
    assert [r["labels"] for r in listed(parquet)] == [["3", "12"], None]
    assert [r["labels"] for r in listed(plain)] == [None]
    jsonl.write_text('{"uri": "/x/a.jpg", "labels": {"cat": 1}}\n')
    with pytest.raises(ValueError, match="`labels` must be a list of class names or ids"):
        listed(jsonl)
    jsonl.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        listed(jsonl)

    for path in ("images/cat/a.jpg", "images/cat/deeper/b.jpg", "images/dog/c.jpg", "images/loose.jpg"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x")
    rows = listed(tmp_path / "images", labels_from="folder")
    labels = {Path(row["uri"]).name: row["labels"] for row in rows}
    assert labels == {"a.jpg": ["cat"], "b.jpg": ["cat"], "c.jpg": ["dog"], "loose.jpg": None}
    assert all(row["labels"] is None for row in listed(tmp_path / "images"))
