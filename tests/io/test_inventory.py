"""An S3 Inventory report as input: a `manifest.json` and its data files in the formats S3 writes (CSV, gzipped,
with URL-encoded keys; Parquet), on the moto S3 server, listed as a LIST of the same bucket lists it."""

from __future__ import annotations

import gzip
import io
import json
from urllib.parse import quote_plus

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from camray.io.listing import LISTING, iter_listing
from camray.io.sources import S3Settings

pytestmark = pytest.mark.integration  # every test lists buckets of the moto S3 server

SOURCE, DESTINATION = "camray-inv-photos", "camray-inv-reports"
KEYS = ["photos/cat.jpg", "photos/a b+c.jpg", "photos/deep/été 2026.jpg", "photos/notes.txt", "photos/100%.png"]
REPORT = f"inv/{SOURCE}/daily"
CSV_SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, StorageClass"


@pytest.fixture(scope="module")
def bucket(s3_server) -> list[dict]:
    """The source bucket's objects as ListObjectsV2 reports them, and the destination bucket for reports."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=SOURCE)
    s3.create_bucket(Bucket=DESTINATION)
    for index, key in enumerate(KEYS):
        s3.put_object(Bucket=SOURCE, Key=key, Body=b"x" * (10 + index))
    return s3.list_objects_v2(Bucket=SOURCE)["Contents"]


def _rows(objects: list[dict]) -> list[dict]:
    """Inventory rows of a versioned bucket: each object current, plus a noncurrent version and a delete marker
    that a listing must leave out."""
    rows = [
        {
            "Bucket": SOURCE,
            "Key": item["Key"],
            "VersionId": "v2",
            "IsLatest": True,
            "IsDeleteMarker": False,
            "Size": item["Size"],
            "LastModifiedDate": item["LastModified"],
            "ETag": item["ETag"],
            "StorageClass": "STANDARD",
        }
        for item in objects
    ]
    old = dict(rows[0], VersionId="v1", IsLatest=False, Size=3)
    gone = dict(rows[0], Key="photos/deleted.jpg", IsDeleteMarker=True, Size=None, ETag=None)
    return [*rows, old, gone]


def _put(key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=DESTINATION, Key=key, Body=body)


def _manifest(file_format: str, schema: str, keys: list[str]) -> str:
    key = f"{REPORT}/2026-12-01T01-00Z/manifest.json"
    manifest = {
        "sourceBucket": SOURCE,
        "destinationBucket": f"arn:aws:s3:::{DESTINATION}",
        "version": "2016-11-30",
        "creationTimestamp": "1764550800000",
        "fileFormat": file_format,
        "fileSchema": schema,
        "files": [{"key": data_key, "size": 1, "MD5checksum": "0"} for data_key in keys],
    }
    _put(key, json.dumps(manifest).encode())
    return f"s3://{DESTINATION}/{key}"


def _csv_line(row: dict) -> str:
    def text(name: str) -> str:
        value = row[name]
        if value is None:
            return ""
        if name == "Key":
            return quote_plus(value, safe="/")
        if name == "LastModifiedDate":
            return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
        if isinstance(value, bool):
            return str(value).lower()
        return str(value)

    return ",".join(f'"{text(name)}"' for name in (name.strip() for name in CSV_SCHEMA.split(","))) + "\n"


def _by_list() -> list[dict]:
    return [row for chunk in iter_listing(f"s3://{SOURCE}/photos", [], True, S3Settings()) for row in chunk.to_pylist()]


def _listed(manifest_uri: str, extensions: list[str] | None = None, chunk_rows: int = 2) -> list[dict]:
    chunks = list(iter_listing(manifest_uri, extensions or [], True, S3Settings(), chunk_rows=chunk_rows))
    assert all(chunk.schema.equals(LISTING) and chunk.num_rows <= chunk_rows for chunk in chunks)
    return [row for chunk in chunks for row in chunk.to_pylist()]


def test_a_csv_inventory_lists_what_a_list_of_the_bucket_lists(bucket):
    rows = _rows(bucket)
    keys = []
    for part, half in enumerate((rows[:3], rows[3:])):
        keys.append(f"{REPORT}/data/part-{part}.csv.gz")
        _put(keys[-1], gzip.compress("".join(_csv_line(row) for row in half).encode()))
    listed = _listed(_manifest("CSV", CSV_SCHEMA, keys))

    assert sorted(listed, key=lambda row: row["uri"]) == sorted(_by_list(), key=lambda row: row["uri"])
    assert {row["uri"] for row in listed} >= {f"s3://{SOURCE}/photos/a b+c.jpg", f"s3://{SOURCE}/photos/100%.png"}
    assert len(_listed(_manifest("CSV", CSV_SCHEMA, keys), [".jpg"])) == 3


def test_a_parquet_inventory_lists_what_a_list_of_the_bucket_lists(bucket):
    rows = _rows(bucket)
    table = pa.table(
        {
            "bucket": [row["Bucket"] for row in rows],
            "key": [row["Key"] for row in rows],
            "version_id": [row["VersionId"] for row in rows],
            "is_latest": [row["IsLatest"] for row in rows],
            "is_delete_marker": [row["IsDeleteMarker"] for row in rows],
            "size": pa.array([row["Size"] for row in rows], pa.int64()),
            "last_modified_date": pa.array([row["LastModifiedDate"] for row in rows], pa.timestamp("ms")),
            "e_tag": [row["ETag"] for row in rows],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _put(f"{REPORT}/data/part-0.parquet", buffer.getvalue())
    schema = "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); ... }"
    listed = _listed(_manifest("Parquet", schema, [f"{REPORT}/data/part-0.parquet"]))

    assert sorted(listed, key=lambda row: row["uri"]) == sorted(_by_list(), key=lambda row: row["uri"])


def test_without_size_and_date_the_etag_is_the_version_and_orc_is_refused(bucket):
    schema = "Bucket, Key, ETag"
    lines = "".join(f'"{SOURCE}","{quote_plus(item["Key"], safe="/")}",{item["ETag"]}\n' for item in bucket)
    _put(f"{REPORT}/data/etag.csv.gz", gzip.compress(lines.encode()))
    listed = _listed(_manifest("CSV", schema, [f"{REPORT}/data/etag.csv.gz"]))
    assert {row["uri"]: row["version"] for row in listed} == {
        f"s3://{SOURCE}/{item['Key']}": item["ETag"].strip('"') for item in bucket
    }
    assert {row["size"] for row in listed} == {-1}

    with pytest.raises(ValueError, match="ORC"):
        _listed(_manifest("ORC", "struct<bucket:string>", []))
