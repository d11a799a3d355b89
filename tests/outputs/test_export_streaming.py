"""The exports read the newest rows as a stream of record batches and write COCO piece by piece, from Delta tables
and from a Parquet output alike."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from camray.bench.history import fabricate_history
from camray.errors import UsageError
from camray.io.output import Output
from camray.outputs.export import coco, write_coco, write_yolo

ROWS = 5000


@pytest.fixture(scope="module", params=["delta", "parquet"])
def history(request, tmp_path_factory):
    """ROWS fabricated result rows of the real schema, spread over 3 succeeded runs."""
    root = tmp_path_factory.mktemp(f"history-{request.param}")
    fabricate_history(root, ROWS, [], "resnet50", "fingerprint", rows_per_file=700, runs=3, table_format=request.param)
    output = Output(str(root))
    assert output.is_delta == (request.param == "delta")
    return output


def _written_order(history: Output) -> list[str]:
    """The fabricated URIs in the order the runs wrote them: file by file, each file's rows as written."""
    files = sorted(history.files("results"))
    return pq.read_table(files[0]).column("image_uri").to_pylist() + [
        uri for path in files[1:] for uri in pq.read_table(path).column("image_uri").to_pylist()
    ]


def test_streamed_batches_are_bounded_in_written_order_and_match_the_whole_table(history):
    batches = list(history.iter_latest_results(None, ["image_uri", "width"], batch_rows=256))
    assert len(batches) > 1 and all(batch.num_rows <= 256 for batch in batches)
    streamed = [uri for batch in batches for uri in batch.column("image_uri").to_pylist()]
    assert streamed == _written_order(history) and len(set(streamed)) == ROWS
    whole = history.latest_results(None, ["image_uri", "width"])
    assert streamed == whole.column("image_uri").to_pylist()
    table_schema = history.schema("results")
    assert [(f.name, f.type) for f in batches[0].schema] == [
        (n, table_schema.field(n).type) for n in ("image_uri", "width")
    ]


def test_written_coco_is_valid_json_with_every_image_in_written_order(history, tmp_path):
    dest = write_coco(history, tmp_path / "coco.json")
    written = json.loads(dest.read_text())
    assert list(written) == ["info", "images", "categories", "annotations"]
    assert [image["id"] for image in written["images"]] == list(range(1, ROWS + 1))
    uris = [image["file_name"] for image in written["images"]]
    assert uris == _written_order(history) and len(set(uris)) == ROWS
    assert written == coco(history)
    # the same bytes as one json.dumps of the whole document, which the export wrote before it streamed
    assert dest.read_text() == json.dumps(written)


def test_yolo_labels_that_would_clash_fail_and_each_export_replaces_the_labels_before_it(tmp_path):
    clashing = tmp_path / "clashing"
    fabricate_history(clashing, 50, [("s3://bench-history/photos/0/7.png", "v1")], "m", "f", rows_per_file=20, runs=2)
    dest = tmp_path / "yolo"
    with pytest.raises(UsageError, match=r"photos/0/7.png would share the label file 7.txt with an image listed"):
        write_yolo(Output(str(clashing)), dest)
    assert sorted(path.name for path in dest.iterdir()) == ["images.txt"]  # no labels/, no partial folder left
    clean = tmp_path / "clean"
    fabricate_history(clean, 50, [], "m", "f", rows_per_file=20, runs=2)
    (dest / "labels").mkdir()
    (dest / "labels" / "from-an-earlier-export.txt").write_text("0 0.5 0.5 1 1\n")
    write_yolo(Output(str(clean)), dest)
    labels = sorted(path.name for path in (dest / "labels").iterdir())
    assert labels == sorted(f"{number}.txt" for number in range(50))
    assert len((dest / "images.txt").read_text().splitlines()) == 50
