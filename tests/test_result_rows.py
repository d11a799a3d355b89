"""Result rows built column by column, checked against hand-made batches and full-resolution encodings."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from pycocotools import mask as coco_mask

from camray.cam.boxes import Components
from camray.cam.label_maps import resize_label_map
from camray.io.schema import ROWS, decode_heatmap, decode_mask, label_map
from camray.result_rows import AnnotatedBatch, RowContext, mask_rle, result_table

CATEGORIES = pa.array([f"class {i}" for i in range(10)])


def _batch() -> tuple[AnnotatedBatch, dict[str, np.ndarray]]:
    """Two images, top-2 classes, 4x4 maps; image 0 has two boxes on its second class and one on its first."""
    maps = torch.zeros(2, 2, 4, 4)
    maps[0, 0, 0:2, 0:2] = 1.0
    maps[0, 1, 2:4, 0:1] = 0.9
    maps[0, 1, 0:1, 3:4] = 1.0
    maps[1, 0, 1:3, 1:3] = 1.0
    components = Components(
        map_index=torch.tensor([0, 1, 1, 2]),
        boxes=torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 2.0, 1.0, 4.0], [3.0, 0.0, 4.0, 1.0], [1.0, 1.0, 3.0, 3.0]]),
        area=torch.tensor([4.0, 2.0, 1.0, 4.0]),
        mass=torch.tensor([4.0, 1.8, 1.0, 4.0]),
        peak=torch.tensor([1.0, 0.9, 1.0, 1.0]),
    )
    class_ids, scores = torch.tensor([[7, 3], [2, 5]]), torch.tensor([[0.5, 0.4], [0.9, 0.05]])
    out = AnnotatedBatch(
        predicted_ids=class_ids,
        predicted_scores=scores,
        class_ids=class_ids,
        scores=scores,
        kept=torch.ones(2, 2, dtype=torch.bool),
        given=torch.zeros(2, 2, dtype=torch.bool),
        maps=maps,
        thresholds=torch.full((2, 2), 0.5),
        components=components,
    )
    images = {
        "image_uri": np.array(["s3://b/a.jpg", "s3://b/b.jpg"], dtype=object),
        "source_version": np.array(["1", "2"], dtype=object),
        "content_sha256": np.array(["a" * 64, "b" * 64], dtype=object),
        "width": np.array([400, 80], dtype=np.int32),
        "height": np.array([200, 40], dtype=np.int32),
        "io_retries": np.array([0, 2], dtype=np.int64),
    }
    return out, images


def test_rows_by_hand():
    out, images = _batch()
    context = RowContext("m", "cam", "fp", "run", CATEGORIES, write_masks=True)
    table = result_table(out, images, context)
    assert table.schema.equals(ROWS)
    first, second = table.to_pylist()
    assert [(p["class_id"], p["label"]) for p in first["predictions"]] == [(7, "class 7"), (3, "class 3")]
    assert [p["score"] for p in second["predictions"]] == pytest.approx([0.9, 0.05])
    # Scores are probability x peak: 0.5 x 1.0, 0.4 x 1.0, 0.4 x 0.9; grid cells are 100 x 50 pixels.
    boxes = [
        (b["class_id"], b["label"], round(b["score"], 4), b["x0"], b["y0"], b["x1"], b["y1"]) for b in first["boxes"]
    ]
    assert boxes == [
        (7, "class 7", 0.5, 0.0, 0.0, 200.0, 100.0),
        (3, "class 3", 0.4, 300.0, 0.0, 400.0, 50.0),
        (3, "class 3", 0.36, 0.0, 100.0, 100.0, 200.0),
    ]
    assert [(b["x0"], b["y0"], b["x1"], b["y1"]) for b in second["boxes"]] == [(20.0, 10.0, 60.0, 30.0)]
    np.testing.assert_array_equal(decode_heatmap(first["cams"][1]), np.round(out.maps[0, 1].numpy() * 255) / 255)
    assert [c["class_id"] for c in second["cams"]] == [2, 5] and second["cams"][0]["heatmap_height"] == 4
    mask = decode_mask(first["mask"])
    assert first["mask"]["class_id"] == 7 and mask.shape == (200, 400)
    assert mask[:100, :200].all() and not mask[100:, :].any() and not mask[:, 200:].any()
    assert (first["image_uri"], second["width"], second["height"]) == ("s3://b/a.jpg", 80, 40)
    assert [first["io_retries"], second["io_retries"]] == [0, 2]
    assert (first["model"], first["method"], first["run_id"], first["error_type"]) == ("m", "cam", "run", None)
    assert first["labels"] is None and second["labels"] is None


def test_kept_classes_apart_from_the_predictions_padding_never_written():
    """Image 0 keeps its given label 4 (not predicted) and its top prediction 7; image 1 keeps only class 2, its
    second slot padding: the padding's map and box are in no row. A given label's box is scored by its map alone."""
    out, images = _batch()
    components = Components(
        map_index=torch.tensor([0, 1, 2, 3]),
        boxes=torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 2.0, 1.0, 4.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 4.0, 4.0]]),
        area=torch.tensor([4.0, 2.0, 4.0, 16.0]),
        mass=torch.tensor([4.0, 1.8, 4.0, 16.0]),
        peak=torch.tensor([1.0, 0.9, 1.0, 1.0]),
    )
    out = AnnotatedBatch(
        predicted_ids=torch.tensor([[7, 3], [2, 5]]),
        predicted_scores=torch.tensor([[0.5, 0.4], [0.9, 0.05]]),
        class_ids=torch.tensor([[7, 4], [2, 2]]),
        scores=torch.tensor([[0.5, 0.01], [0.9, 0.9]]),
        kept=torch.tensor([[True, True], [True, False]]),
        given=torch.tensor([[False, True], [False, False]]),
        maps=out.maps,
        thresholds=out.thresholds,
        components=components,
    )
    context = RowContext("m", "cam", "fp", "run", CATEGORIES, write_masks=True)
    first, second = result_table(out, images, context, given=[[4], None]).to_pylist()
    assert [p["class_id"] for p in first["predictions"]] == [7, 3] and [
        p["class_id"] for p in second["predictions"]
    ] == [2, 5]
    assert [c["class_id"] for c in first["cams"]] == [7, 4] and [c["class_id"] for c in second["cams"]] == [2]
    assert [(b["class_id"], round(b["score"], 4)) for b in first["boxes"]] == [(4, 0.9), (7, 0.5)]
    assert [b["class_id"] for b in second["boxes"]] == [2]
    assert first["labels"] == [{"class_id": 4, "label": "class 4"}] and second["labels"] is None
    assert first["mask"]["class_id"] == 7 and second["mask"]["class_id"] == 2


def test_an_image_that_keeps_no_class_has_no_map_box_or_mask():
    out, images = _batch()
    empty = Components(torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), *(torch.zeros(0) for _ in range(3)))
    out = AnnotatedBatch(
        out.predicted_ids,
        out.predicted_scores,
        out.class_ids,
        out.scores,
        torch.tensor([[True, False], [False, False]]),
        out.given,
        out.maps,
        out.thresholds,
        empty,
    )
    first, second = result_table(out, images, RowContext("m", "cam", "fp", "run", CATEGORIES, True)).to_pylist()
    assert [c["class_id"] for c in first["cams"]] == [7] and second["cams"] == [] and second["mask"] is None
    assert len(second["predictions"]) == 2 and first["mask"]["class_id"] == 7


def test_no_masks_and_no_boxes():
    out, images = _batch()
    empty = Components(*(torch.zeros(0) for _ in range(5)))
    empty = Components(empty.map_index.long(), torch.zeros(0, 4), empty.area, empty.mass, empty.peak)
    out = AnnotatedBatch(
        out.predicted_ids,
        out.predicted_scores,
        out.class_ids,
        out.scores,
        out.kept,
        out.given,
        out.maps,
        out.thresholds,
        empty,
    )
    rows = result_table(out, images, RowContext("m", "cam", "fp", "run", CATEGORIES, write_masks=False)).to_pylist()
    assert [row["boxes"] for row in rows] == [[], []] and [row["mask"] for row in rows] == [None, None]


@pytest.mark.parametrize(
    "shape,size", [((56, 56), (451, 300)), ((7, 9), (40, 33)), ((56, 56), (3000, 4000)), ((5, 5), (3, 2))]
)
@pytest.mark.parametrize("seed", range(3))
def test_mask_rle_equals_encoding_the_full_resolution_mask(shape, size, seed):
    grid = np.random.default_rng(seed).random(shape) < 0.4
    width, height = size
    rows = ((np.arange(height) + 0.5) * (shape[0] / height)).astype(np.intp)
    cols = ((np.arange(width) + 0.5) * (shape[1] / width)).astype(np.intp)
    full = np.asfortranarray(grid[rows[:, None], cols[None, :]].astype(np.uint8))
    expected = coco_mask.encode(full)["counts"].decode()
    assert mask_rle(grid, width, height) == {"size": [height, width], "counts": expected}
    all_on = mask_rle(np.ones(shape, dtype=bool), width, height)
    assert coco_mask.area({"size": [height, width], "counts": all_on["counts"].encode()}) == width * height


def _replaced(out: AnnotatedBatch, **fields: object) -> AnnotatedBatch:
    return AnnotatedBatch(**{**{name: getattr(out, name) for name in AnnotatedBatch.__dataclass_fields__}, **fields})


def test_label_maps_become_one_rle_per_kept_class_and_the_undecided_pixels():
    """Image 0 keeps both classes, image 1 only its first (its second slot padding): every kept class has its RLE
    at the image's size, in the order of `cams`, none overlapping; image 1's padding never appears; the band's
    pixels are `ignore_mask`."""
    out, images = _batch()
    out = _replaced(out, kept=torch.tensor([[True, True], [True, False]]))
    label_maps = torch.zeros(2, 4, 4, dtype=torch.uint8)
    label_maps[0, :2, :2], label_maps[0, 2:, :], label_maps[0, 0, 3] = 1, 2, 255
    label_maps[1, 1:3, 1:3] = 1
    context = RowContext("m", "cam", "fp", "run", CATEGORIES, write_masks=False, write_ignore=True)
    first, second = result_table(_replaced(out, label_maps=label_maps), images, context).to_pylist()
    assert [(m["class_id"], m["label"]) for m in first["masks"]] == [(7, "class 7"), (3, "class 3")]
    assert [m["class_id"] for m in second["masks"]] == [2]
    for row, grid in zip((first, second), label_maps.numpy(), strict=True):
        expected = resize_label_map(grid, row["width"], row["height"])
        decoded = [decode_mask(entry) for entry in row["masks"]]
        assert all(mask.shape == (row["height"], row["width"]) for mask in decoded)
        assert sum(mask.astype(int) for mask in decoded).max() == 1  # no pixel in two masks
        for value, mask in enumerate(decoded, start=1):
            np.testing.assert_array_equal(mask, expected == value)
        np.testing.assert_array_equal(decode_mask(row["ignore_mask"]), expected == 255)
        np.testing.assert_array_equal(label_map(row), expected)
    assert not decode_mask(second["ignore_mask"]).any() and first["mask"] is None
    without = result_table(out, images, RowContext("m", "cam", "fp", "run", CATEGORIES, True)).to_pylist()
    assert [(row["masks"], row["ignore_mask"]) for row in without] == [(None, None)] * 2  # no label maps written
    no_band = RowContext("m", "cam", "fp", "run", CATEGORIES, write_masks=True)
    assert [
        row["ignore_mask"] for row in result_table(_replaced(out, label_maps=label_maps), images, no_band).to_pylist()
    ] == [None, None]
