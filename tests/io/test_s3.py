"""S3 object IO against the real moto server; the fault tests (tests/faults/) break the wire under it."""

import pytest

from camray.io.s3 import S3Settings, StoreUnavailableError, s3_objects, store_failure
from camray.io.sources import ByteReader, write_object


def test_settings_refuse_fewer_than_one_attempt():
    with pytest.raises(ValueError, match="max_attempts"):
        S3Settings(max_attempts=0)


@pytest.mark.integration
def test_put_and_get_round_trip_without_retries(s3_server, photos):
    import boto3

    boto3.client("s3").create_bucket(Bucket="camray-s3-objects")
    data = photos["coffee.png"]
    assert write_object("s3://camray-s3-objects/a/coffee.png", data, S3Settings()) == 0
    assert s3_objects(S3Settings()).get("s3://camray-s3-objects/a/coffee.png") == (data, 0)
    reader = ByteReader(S3Settings())
    assert reader.read("s3://camray-s3-objects/a/coffee.png") == data and reader.retries == 0
    with pytest.raises(FileNotFoundError, match="camray-s3-objects/a/missing.png"):
        reader.read("s3://camray-s3-objects/a/missing.png")


@pytest.mark.integration
def test_pyarrows_retries_of_a_throttling_store_never_run_out(s3_server):
    """The AWS SDK's standard retry strategy stops retrying once its quota is spent (about 100 retries a
    filesystem), and a HEAD's 503 then fails a run's commit; camray's filesystems retry every operation alike."""
    import boto3

    from camray.bench.s3_proxy import FaultRates, FaultyS3Proxy
    from camray.io.sources import filesystem_for

    boto3.client("s3").create_bucket(Bucket="camray-s3-throttled")
    boto3.client("s3").put_object(Bucket="camray-s3-throttled", Key="k", Body=b"x" * 100)
    rates = FaultRates(slowdown=0.3, reset=0, delay=0)
    with FaultyS3Proxy(s3_server, seed=2, rates=rates, force_each=False) as proxy:
        filesystem = filesystem_for("s3://camray-s3-throttled/k", S3Settings(proxy.endpoint, max_attempts=10))[0]
        sizes = [filesystem.get_file_info("camray-s3-throttled/k").size for _ in range(500)]
        throttled = proxy.injected("HEAD")["slowdown"]
    assert sizes == [100] * 500
    assert throttled > 150, "more 503s than the standard strategy's quota retries"


def test_local_writes_are_whole_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "staging" / "results" / "part.parquet"
    assert write_object(str(target), b"first", S3Settings()) == 0
    assert write_object(str(target), b"second", S3Settings()) == 0
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["part.parquet"]


def test_an_outage_is_found_behind_ray_s_wrapping():
    outage = StoreUnavailableError("S3 GetObject s3://b/k on http://127.0.0.1:9 failed after 3 attempts: refused")
    try:
        try:
            raise outage
        except StoreUnavailableError as exc:
            raise RuntimeError("UDF failed to process a data block.") from exc
    except RuntimeError as wrapped:
        assert store_failure(wrapped) is outage
    # Ray pickles a task's exception without its cause chain: only the worker's traceback text is left.
    text = (
        'ray::MapBatches(read_decode_batch)() (pid=1, ip=10.0.0.1)\n  File "reader.py", line 80\n'
        f"camray.io.s3.StoreUnavailableError: {outage}\n"
    )
    found = store_failure(RuntimeError(text))
    assert type(found) is StoreUnavailableError and str(found) == str(outage)
    assert store_failure(ValueError("a bad image")) is None
