"""The exports read the newest rows as a stream of record batches and write COCO piece by piece."""

from __future__ import annotations

import json

import pytest

from camray.bench.history import fabricate_history
from camray.outputs.export import coco, write_coco
from camray.outputs.tables import Output

ROWS = 5000


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """ROWS fabricated result rows of the real schema, spread over 3 succeeded runs."""
    root = tmp_path_factory.mktemp("history")
    fabricate_history(root, ROWS, [], "resnet50", "fingerprint", rows_per_file=700, runs=3)
    return Output(str(root))


def test_streamed_batches_are_bounded_ordered_and_match_the_whole_table(history):
    batches = list(history.iter_latest_results(None, ["image_uri", "width"], batch_rows=256))
    assert len(batches) > 1 and all(batch.num_rows <= 256 for batch in batches)
    streamed = [uri for batch in batches for uri in batch.column("image_uri").to_pylist()]
    assert streamed == sorted(streamed) and len(set(streamed)) == len(streamed)
    whole = history.latest_results(None, ["image_uri", "width"])
    assert streamed == whole.column("image_uri").to_pylist()
    table_schema = history.dataset("results").schema
    assert [(f.name, f.type) for f in batches[0].schema] == [
        (n, table_schema.field(n).type) for n in ("image_uri", "width")
    ]


def test_written_coco_is_valid_json_with_every_image_in_uri_order(history, tmp_path):
    dest = write_coco(history, tmp_path / "coco.json")
    written = json.loads(dest.read_text())
    assert list(written) == ["info", "images", "categories", "annotations"]
    assert [image["id"] for image in written["images"]] == list(range(1, ROWS + 1))
    uris = [image["file_name"] for image in written["images"]]
    assert uris == sorted(uris) and len(set(uris)) == ROWS
    assert written == coco(history)
    # the same bytes as one json.dumps of the whole document, which the export wrote before it streamed
    assert dest.read_text() == json.dumps(written)
