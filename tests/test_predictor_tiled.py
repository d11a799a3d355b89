"""The tiled localization mode on the bundled model and real photos: one forward for the whole images, one
for all their tiles, maps over each whole image, and rows the job can write."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import torch
from test_predictor import _batch
from truth import CHELSEA_CAT, iou

from pipeline.cam.tiling import tile_layout, tile_stride
from pipeline.config import load_config
from pipeline.io.schema import ROWS
from pipeline.predictor import Annotator, Predictor, decode_side

CATS = {281, 282, 283, 284, 285}


def test_tiles_go_through_the_model_in_one_batch(photos, lite0) -> None:
    config = load_config(preset="accurate")
    loaded = copy.deepcopy(lite0)
    annotator = Annotator(loaded, config.cam, config.boxes, 224, torch.device("cpu"), tiling=config.tiling)
    side = decode_side(config.tiling, 224)
    assert annotator.canvas_size == side == 224 + 2 * tile_stride(224, config.tiling.overlap)
    batch = _batch(photos, ["chelsea.png", "rocket.jpg"], size=side)
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    calls: list[tuple[int, ...]] = []
    handle = loaded.module.register_forward_hook(lambda _m, inputs, _o: calls.append(tuple(inputs[0].shape)))
    try:
        out = annotator.annotate(torch.from_numpy(batch["pixels"]), valid)
    finally:
        handle.remove()
    tiles = len(tile_layout([tuple(v) for v in valid.tolist()], 224, tile_stride(224, config.tiling.overlap))[0])
    assert calls == [(2, 3, 224, 224), (tiles, 3, 224, 224)]
    assert out.maps.shape[:2] == (2, config.cam.top_k) and out.maps.amax((-2, -1)).gt(0.99).all()
    assert int(out.class_ids[0, 0]) in CATS


def test_tiled_rows_follow_the_schema_and_box_on_the_cat(photos) -> None:
    """The box lies on the cat; `accurate` shrinks it to the cat's most activated part (README, Localization),
    so it is checked for where it is, not for covering the whole cat."""
    config = load_config(preset="accurate", overrides={"sink.uri": "unused"})
    predictor = Predictor(config.model_dump(mode="json"), "tiled-run", 224, {})
    table = predictor(_batch(photos, ["chelsea.png"], size=decode_side(config.tiling, 224)))
    assert table.schema.equals(ROWS) and isinstance(table, pa.Table)
    row = table.to_pylist()[0]
    assert row["config_fingerprint"] == config.fingerprint()
    top = row["predictions"][0]["class_id"]
    box = next(b for b in row["boxes"] if b["class_id"] == top)
    assert top in CATS
    found = (box["x0"], box["y0"], box["x1"], box["y1"])
    inside = iou(found, CHELSEA_CAT) * (_area(found) + _area(CHELSEA_CAT)) / (1 + iou(found, CHELSEA_CAT))
    assert inside / _area(found) >= 0.9


def _area(box: tuple[float, ...]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])
