"""WebDataset shards and Parquet image tables through the real job, on the shared Ray head: shards on the moto S3
server behind a proxy that counts every request, tables on local disk and on S3, written by the reference writers
with labels and with each kind of bad input. Reruns skip what is done without a GET; a rewritten container is
read again for its own samples only; the users' tools (export, report) find the samples by their URIs."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest
from container_inputs import jpeg, member_offsets, write_shard, write_table
from readers import succeeded_inputs

from camray.io.sources import S3Settings, filesystem_for

pytestmark = pytest.mark.integration

BUCKET = "camray-containers-it"


@pytest.fixture(scope="module")
def jpegs(small_photos) -> list[bytes]:
    return [path.read_bytes() for path in sorted(small_photos.iterdir())[:12]]


def _run(source: str, output: str, endpoint: str | None = None, **fields):
    from camray.config import load_config
    from camray.runner import run_job

    overrides = {
        "source.uri": source,
        "sink.uri": output,
        "runtime.batch_size": 4,
        "runtime.decode_batch_size": 4,
        "runtime.num_actors": 1,
        **({"storage.s3_endpoint_url": endpoint} if endpoint else {}),
        **fields,
    }
    return run_job(load_config(overrides=overrides))


def _table(output: str, kind: str) -> list[dict]:
    fs, path = filesystem_for(f"{output}/{kind}", S3Settings())
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pylist()


def _gets(log: list[tuple[str, str, str]], part: str) -> Counter[str]:
    """GETs of each object whose key holds `part` (its ranged GETs included), by object name."""
    return Counter(
        target.split("?")[0].rsplit("/", 1)[-1] for method, target, _ in log if method == "GET" and part in target
    )


def test_shards_on_s3_exactly_once_rerun_without_a_get_and_a_rewritten_shard_alone(
    s3_server, ray_cluster, jpegs, tmp_path
):
    import boto3

    from camray.bench.s3_proxy import FaultRates, FaultyS3Proxy

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    shards = {
        "shard-000.tar": {f"a{i}": {"jpg": jpegs[i], "cls": str(281 + i % 5)} for i in range(6)},
        "shard-001.tar": {"b0": {"jpg": jpegs[6], "cls": "1"}, "b1": {"jpg": b"\xff\xd8\xff garbage", "cls": "2"}},
        "shard-002.tar": {f"c{i}": {"jpg": jpegs[7 + i]} for i in range(3)},
    }
    for name, samples in shards.items():
        path = write_shard(tmp_path / name, samples)
        data = path.read_bytes()
        if name == "shard-002.tar":  # cut inside its last image: the two samples before it are kept
            data = data[: member_offsets(path)["c2.jpg"][1] + 100]
        s3.put_object(Bucket=BUCKET, Key=f"shards/{name}", Body=data)
    s3.put_object(Bucket=BUCKET, Key="shards/shard-003.tar", Body=b"a shopping list, not a tar")
    source, output = f"s3://{BUCKET}/shards/shard-{{000..004}}.tar", f"s3://{BUCKET}/out"

    with FaultyS3Proxy(s3_server, seed=1, rates=FaultRates(0.0, 0.0, 0.0), force_each=False, deadline_s=600) as proxy:
        first = _run(source, output, proxy.endpoint)
        first_gets = _gets(list(proxy.log), "/shards/")
        results, errors = _table(output, "results"), _table(output, "errors")
        proxy.log.clear()
        again = _run(source, output, proxy.endpoint)
        again_gets = _gets(list(proxy.log), "/shards/")
        proxy.log.clear()
        rewritten = {f"a{i}": {"jpg": jpeg(jpegs[i], 80)} for i in range(3)}
        s3.put_object(
            Bucket=BUCKET, Key="shards/shard-000.tar", Body=write_shard(tmp_path / "new.tar", rewritten).read_bytes()
        )
        third = _run(source, output, proxy.endpoint)
        third_gets = _gets(list(proxy.log), "/shards/")

    # Run 1: every sample once, each shard in one GET (the name no object has, too: its 404 is its error row).
    shard = f"s3://{BUCKET}/shards/shard"
    assert (first.status, first.listed, first.skipped, first.results, first.errors) == ("succeeded", 5, 0, 9, 5)
    assert first_gets == {f"shard-00{i}.tar": 1 for i in range(5)}
    assert {row["image_uri"]: (row["stage"], row["error_type"]) for row in errors} == {
        f"{shard}-001.tar#b1": ("decode", "UnidentifiedImageError"),
        f"{shard}-002.tar#c2": ("read", "DamagedShard"),
        f"{shard}-002.tar": ("read", "DamagedShard"),
        f"{shard}-003.tar": ("read", "UnreadableShard"),
        f"{shard}-004.tar": ("read", "FileNotFoundError"),
    }
    assert sorted(row["image_uri"] for row in results) == sorted(
        [f"{shard}-000.tar#a{i}" for i in range(6)]
        + [f"{shard}-001.tar#b0"]
        + [f"{shard}-002.tar#c{i}" for i in range(2)]
    )
    assert {row["container_uri"] for row in results} == {f"{shard}-00{i}.tar" for i in range(3)}
    assert all(row["source_version"] for row in results)

    # Run 2: the done shard is skipped without a GET; the others are read again for their failures alone.
    assert (again.status, again.skipped, again.results, again.errors) == ("succeeded", 1, 0, first.errors)
    assert again_gets == {f"shard-00{i}.tar": 1 for i in range(1, 5)}

    # Run 3: the rewritten shard's samples (a new version) alone are annotated.
    assert (third.status, third.skipped, third.results, third.errors) == ("succeeded", 0, 3, 5)
    newest = [row for row in _table(output, "results") if row["run_id"] == third.run_id]
    assert sorted(row["image_uri"] for row in newest) == [f"{shard}-000.tar#a{i}" for i in range(3)]
    assert third_gets["shard-000.tar"] == 1


def test_tables_from_datasets_on_disk_and_s3_with_bad_rows_exports_and_report(s3_server, ray_cluster, jpegs, tmp_path):
    import boto3

    from camray.io.output import Output
    from camray.outputs.export import coco, write_yolo
    from camray.outputs.report import write_report

    tables = tmp_path / "tables"
    write_table(
        tables / "part-0.parquet", jpegs[:5], labels=[281, 282, 283, 284, 285], name=[f"p{i}" for i in range(5)]
    )
    write_table(
        tables / "part-1.parquet",
        [jpegs[5], None, b"not an image", jpegs[6]],
        labels=[1, 2, 3, 4],
        name=["q0", "q1", "q2", "q3"],
    )
    (tables / "_SUCCESS").write_text("")
    fields = {"source.format": "parquet", "source.id_column": "name", "source.labels_column": "label"}
    output = str(tmp_path / "out")
    first = _run(str(tables), output, **fields)
    assert (first.status, first.listed, first.results, first.errors) == ("succeeded", 2, 7, 2)
    errors = {
        row["image_uri"].rsplit("/", 1)[-1]: (row["stage"], row["error_type"]) for row in _table(output, "errors")
    }
    assert errors == {
        "part-1.parquet#q1": ("read", "NoImage"),
        "part-1.parquet#q2": ("decode", "UnidentifiedImageError"),
    }
    seen = succeeded_inputs(output)
    assert set(seen.values()) == {1} and len(seen) == 9

    # The users' tools name samples by URI and lay files out by table file and id.
    out = Output(output)
    document = coco(out)
    assert sorted(image["file_name"].rsplit("/", 1)[-1] for image in document["images"])[:2] == [
        "part-0.parquet#p0",
        "part-0.parquet#p1",
    ]
    write_yolo(out, tmp_path / "yolo", min_score=0.0)
    labels = sorted(
        str(path.relative_to(tmp_path / "yolo" / "labels")) for path in (tmp_path / "yolo" / "labels").rglob("*.txt")
    )
    assert labels == [f"part-0/p{i}.txt" for i in range(5)] + ["part-1/q0.txt", "part-1/q3.txt"]
    page = write_report(out, tmp_path / "report").read_text()
    assert "input missing" not in page and "unreadable" not in page and page.count('<section class="entry">') == 7

    # The same table on S3: one HEAD and a few ranged GETs per file, the same rows.
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=f"{BUCKET}-tables")
    for name in ("part-0.parquet", "part-1.parquet"):
        s3.put_object(Bucket=f"{BUCKET}-tables", Key=f"t/{name}", Body=(tables / name).read_bytes())
    from camray.bench.s3_proxy import FaultRates, FaultyS3Proxy

    with FaultyS3Proxy(s3_server, seed=1, rates=FaultRates(0.0, 0.0, 0.0), force_each=False, deadline_s=300) as proxy:
        on_s3 = _run(f"s3://{BUCKET}-tables/t", f"s3://{BUCKET}-tables/out", proxy.endpoint, **fields)
        gets = _gets(list(proxy.log), "/t/part-")
    assert (on_s3.status, on_s3.results, on_s3.errors) == ("succeeded", 7, 2)
    assert set(gets) == {"part-0.parquet", "part-1.parquet"} and max(gets.values()) <= 4
    by_key = {row["image_uri"].rsplit("#", 1)[-1]: row for row in _table(f"s3://{BUCKET}-tables/out", "results")}
    local = {row["image_uri"].rsplit("#", 1)[-1]: row for row in _table(output, "results")}
    assert {key: row["predictions"][0]["class_id"] for key, row in by_key.items()} == {
        key: row["predictions"][0]["class_id"] for key, row in local.items()
    }

    # A rewritten file is annotated again, its rows alone; the other is skipped without being opened.
    write_table(tables / "part-0.parquet", jpegs[:2], labels=[281, 282], name=["p0", "p1"])
    second = _run(str(tables), output, **fields)
    assert (second.status, second.skipped, second.results, second.errors) == ("succeeded", 0, 2, 2)
    newest = [
        row["image_uri"].rsplit("/", 1)[-1] for row in _table(output, "results") if row["run_id"] == second.run_id
    ]
    assert sorted(newest) == ["part-0.parquet#p0", "part-0.parquet#p1"]
    run = json.loads(next(row for row in _table(output, "runs") if row["run_id"] == second.run_id)["config_json"])
    assert run["source"]["format"] == "parquet"
