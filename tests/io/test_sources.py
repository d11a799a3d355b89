import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from camray.io.listing import list_inputs
from camray.io.sources import ByteReader, S3Settings

IMAGES = [".jpg", ".png"]


def test_local_folder_listing_is_sorted_filtered_and_recursive(tmp_path):
    (tmp_path / "b.jpg").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.PNG").write_bytes(b"22")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"3")
    listed = list_inputs(str(tmp_path), IMAGES, True, S3Settings())
    assert [item.uri.rsplit("/", 1)[-1] for item in listed] == ["b.jpg", "a.PNG"]
    assert [item.size for item in listed] == [1, 2] and all(item.version for item in listed)
    flat = list_inputs(str(tmp_path), IMAGES, False, S3Settings())
    assert [item.uri.rsplit("/", 1)[-1] for item in flat] == ["b.jpg"]


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_manifests(tmp_path, kind):
    uris = [str(tmp_path / "x.jpg"), "s3://bucket/y.png"]
    path = tmp_path / f"manifest.{kind}"
    if kind == "txt":
        path.write_text("# images\n" + "\n".join(uris) + "\n\n")
    elif kind == "csv":
        path.write_text("uri,label\n" + "\n".join(f"{u},0" for u in uris) + "\n")
    else:
        pq.write_table(pa.table({"uri": uris}), path)
    assert [item.uri for item in list_inputs(str(path), IMAGES, True, S3Settings())] == uris


def test_missing_input_is_a_setup_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs(str(tmp_path / "nope"), IMAGES, True, S3Settings())


@pytest.mark.integration
def test_s3_prefix_listing_and_reading(s3_server, photos):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="camray-sources")
    s3.put_object(Bucket="camray-sources", Key="in/a/chelsea.png", Body=photos["chelsea.png"])
    s3.put_object(Bucket="camray-sources", Key="in/readme.md", Body=b"hi")
    listed = list_inputs("s3://camray-sources/in/", IMAGES, True, S3Settings())
    assert [item.uri for item in listed] == ["s3://camray-sources/in/a/chelsea.png"]
    assert listed[0].size == len(photos["chelsea.png"])
    assert ByteReader(S3Settings()).read(listed[0].uri) == photos["chelsea.png"]
    with pytest.raises(FileNotFoundError):
        ByteReader(S3Settings()).read("s3://camray-sources/in/missing.jpg")
