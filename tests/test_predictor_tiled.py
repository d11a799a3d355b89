"""The tiled localization mode on the bundled model and real photos: one forward for the whole images, one
for all their tiles, maps over each whole image, and rows the job can write."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import skimage
import torch
from PIL import Image
from test_predictor import _batch
from truth import CHELSEA_CAT, iou

from camray.annotator import Annotator, TiledMode, decode_side, top1_box_fraction
from camray.cam.boxes import Components
from camray.cam.tiling import tile_layout, tile_stride
from camray.config import load_config
from camray.evaluation.sweep import predictor_of
from camray.io.schema import ROWS

CATS = {281, 282, 283, 284, 285}


def _small_cat_on_grass(photos: dict[str, bytes]) -> bytes:
    """A wide shot: the cat at a sixth of a 640 x 480 frame of grass, which the model is far from sure of."""
    grass = Image.open(Path(skimage.__file__).parent / "data" / "grass.png").convert("RGB").resize((640, 480))
    cat = Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB")
    cat.thumbnail((110, 110))
    grass.paste(cat, (400, 300))
    out = io.BytesIO()
    grass.save(out, format="PNG")
    return out.getvalue()


def _annotate_counting_forwards(annotator: Annotator, lite0_module, batch) -> tuple[object, list[tuple[int, ...]]]:
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    calls: list[tuple[int, ...]] = []
    handle = lite0_module.register_forward_hook(lambda _m, inputs, _o: calls.append(tuple(inputs[0].shape)))
    try:
        return annotator.annotate(torch.from_numpy(batch["pixels"]), valid), calls
    finally:
        handle.remove()


def test_tiles_go_through_the_model_in_one_batch(photos, lite0) -> None:
    config = load_config(preset="accurate", overrides={"cam.plain_above_score": None})
    loaded = copy.deepcopy(lite0)
    annotator = Annotator(loaded, config.cam, config.boxes, torch.device("cpu"), tiling=config.tiling)
    side = decode_side(config.tiling, 224)
    assert isinstance(annotator.mode, TiledMode)
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


def test_a_confident_image_keeps_the_plain_map_and_sends_no_tiles(photos, lite0) -> None:
    """`accurate` with `cam.plain_above_score`: the close-up cat, classified with confidence, keeps the plain
    coarse map at `cam.plain_threshold`; only the wide shot's tiles go through the model."""
    config = load_config(preset="accurate")
    threshold = config.cam.plain_above_score
    assert threshold is not None
    side = decode_side(config.tiling, 224)
    batch = _batch({**photos, "wide.png": _small_cat_on_grass(photos)}, ["chelsea.png", "wide.png"], size=side)

    def annotator(**cam: object) -> tuple[Annotator, object]:
        loaded = copy.deepcopy(lite0)
        cam_config = config.cam.model_copy(update=cam)
        return Annotator(loaded, cam_config, config.boxes, torch.device("cpu"), tiling=config.tiling), loaded

    gated, gated_model = annotator()
    out, calls = _annotate_counting_forwards(gated, gated_model.module, batch)
    assert float(out.scores[0, 0]) >= threshold > float(out.scores[1, 0])  # the premise: sure of one, not the other
    valid = [(int(batch["valid_width"][1]), int(batch["valid_height"][1]))]
    wide_tiles = len(tile_layout(valid, 224, tile_stride(224, config.tiling.overlap))[0])
    assert calls == [(2, 3, 224, 224), (wide_tiles, 3, 224, 224)]
    assert out.thresholds[0].eq(config.cam.plain_threshold).all() and out.thresholds[1].eq(config.boxes.threshold).all()

    every_image_plain, plain_model = annotator(plain_above_score=1e-6)
    plain, plain_calls = _annotate_counting_forwards(every_image_plain, plain_model.module, batch)
    assert plain_calls == [(2, 3, 224, 224)]  # no tiles at all
    every_image_tiled, tiled_model = annotator(plain_above_score=None)
    tiled, _ = _annotate_counting_forwards(every_image_tiled, tiled_model.module, batch)
    assert torch.equal(out.maps[0], plain.maps[0]) and torch.equal(out.maps[1], tiled.maps[1])
    assert not torch.allclose(out.maps[0], tiled.maps[0], atol=0.05)


def test_tiled_rows_follow_the_schema_and_box_the_cat(photos) -> None:
    """The close-up cat is an image the model is sure of: `accurate` keeps its plain map, whose box covers the
    whole cat (with every image tiled, the box would shrink to the cat's most activated part: docs/localization.md)."""
    config = load_config(preset="accurate", overrides={"sink.uri": "unused"})
    predictor = predictor_of(config, "tiled-run")
    table = predictor(_batch(photos, ["chelsea.png"], size=decode_side(config.tiling, 224)))
    assert table.schema.equals(ROWS) and isinstance(table, pa.Table)
    row = table.to_pylist()[0]
    assert row["config_fingerprint"] == config.fingerprint()
    top = row["predictions"][0]["class_id"]
    box = next(b for b in row["boxes"] if b["class_id"] == top)
    assert top in CATS and row["predictions"][0]["score"] >= config.cam.plain_above_score
    assert iou((box["x0"], box["y0"], box["x1"], box["y1"]), CHELSEA_CAT) >= 0.5


def _first_box(out, image: int) -> tuple[float, float, float, float] | None:
    """The first box of image `image`'s top-1 class, as rows order them (highest peak), in grid pixels."""
    k = out.class_ids.shape[1]
    comp = out.components
    mine = torch.nonzero(comp.map_index == image * k).flatten()
    if not mine.numel():
        return None
    best = mine[int(torch.argmax(comp.peak[mine]))]
    return tuple(float(v) for v in comp.boxes[best])


def test_a_large_tiled_box_takes_the_whole_images_refined_map(photos, lite0) -> None:
    """`tiling.whole_image_above_area`, both images tiled: the close-up cat's tiled box is larger than the wide
    shot's small cat's; with the threshold between the two, the cat takes the whole image's refined map at
    `whole_image_threshold`, and the small cat keeps the tiled map and its threshold. (In `accurate` the close-up
    cat never gets this far: the model is sure of it, so it keeps the plain map; the sweep measures the rule.)"""
    config = load_config(preset="accurate", overrides={"cam.plain_above_score": None})
    side = decode_side(config.tiling, 224)
    batch = _batch({**photos, "wide.png": _small_cat_on_grass(photos)}, ["chelsea.png", "wide.png"], size=side)

    def annotated(whole_image_above_area: float | None):
        tiling = config.tiling.model_copy(update={"whole_image_above_area": whole_image_above_area})
        annotator = Annotator(copy.deepcopy(lite0), config.cam, config.boxes, torch.device("cpu"), tiling=tiling)
        valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
        return annotator.annotate(torch.from_numpy(batch["pixels"]), valid)

    tiled_only = annotated(None)
    grid = tiled_only.maps.shape[-1]
    cat, small = (
        (x1 - x0) * (y1 - y0) / grid**2 for x0, y0, x1, y1 in (_first_box(tiled_only, 0), _first_box(tiled_only, 1))
    )
    assert cat > small  # the premise

    between = annotated((cat + small) / 2)
    whole_only = annotated(1e-6)
    assert torch.equal(between.maps[0], whole_only.maps[0]) and torch.equal(between.maps[1], tiled_only.maps[1])
    assert not torch.allclose(between.maps[0], tiled_only.maps[0], atol=0.05)
    assert between.thresholds[0].eq(config.tiling.whole_image_threshold).all()
    assert between.thresholds[1].eq(config.boxes.threshold).all()


def test_top1_box_fraction_matches_a_loop() -> None:
    """The vectorised first-box lookup against the obvious loop: highest peak of the top-1 map, ties to the
    first component, 0 for images without one."""
    rng = np.random.default_rng(0)
    images, k, grid = 7, 3, 16
    count = 40
    map_index = torch.from_numpy(np.sort(rng.integers(0, images * k, count)))
    x0 = torch.from_numpy(rng.integers(0, grid - 1, count))
    y0 = torch.from_numpy(rng.integers(0, grid - 1, count))
    boxes = torch.stack(
        [
            x0,
            y0,
            x0 + 1 + torch.from_numpy(rng.integers(0, 4, count)),
            y0 + 1 + torch.from_numpy(rng.integers(0, 4, count)),
        ],
        1,
    ).clamp(max=grid)
    peak = torch.from_numpy(rng.choice([0.5, 0.75, 1.0], count).astype(np.float32))  # ties on purpose
    components = Components(map_index, boxes, torch.ones(count), torch.ones(count), peak)
    expected = []
    for image in range(images):
        best = None
        for i in range(count):
            if int(map_index[i]) == image * k and (best is None or float(peak[i]) > float(peak[best])):
                best = i
        if best is None:
            expected.append(0.0)
        else:
            bx0, by0, bx1, by1 = boxes[best].tolist()
            expected.append((bx1 - bx0) * (by1 - by0) / grid**2)
    assert torch.allclose(top1_box_fraction(components, images, k, grid), torch.tensor(expected))
