"""The label-map sweep's own parts: the annotator mapping the classes it is handed, and the refinements' shapes."""

from __future__ import annotations

import numpy as np
import torch

from camray.config import load_config
from camray.evaluation import refiners
from camray.evaluation.seg_sweep import ChosenClasses, ImageMaps, crf_label_map, predicted_label_map
from camray.image.decode import decode_image


def test_the_annotator_maps_the_classes_it_is_handed(lite0, photos) -> None:
    config = load_config(overrides={"sink.uri": "unused"}, preset="accurate")  # tiles follow the chosen classes
    annotator = ChosenClasses(
        lite0, config.cam, config.boxes, 224, torch.device("cpu"), tiling=config.tiling, sigmoid=False
    )
    decoded = [decode_image(photos[name], annotator.canvas_size, "letterbox") for name in ("chelsea.png", "coffee.png")]
    pixels = torch.from_numpy(np.stack([d.pixels for d in decoded]))
    valid = torch.tensor([[d.valid_width, d.valid_height] for d in decoded])
    annotator.chosen = torch.tensor([[967, 281], [281, 281]])  # espresso on the cat: ranked far below the top-k
    with torch.inference_mode():
        out = annotator.annotate(pixels, valid)
    assert torch.equal(out.class_ids, annotator.chosen)
    assert out.maps.shape[:2] == (2, 2) and float(out.maps.amax()) == 1.0
    annotator.chosen = None
    with torch.inference_mode():
        top = annotator.annotate(pixels, valid)
    assert top.class_ids[0, 0] in (281, 282, 283, 284, 285)  # its own top-k again: a cat breed first


def test_refinements_keep_the_label_rule_and_the_image_size() -> None:
    rng = np.random.default_rng(0)
    canvas = np.zeros((40, 60, 3), dtype=np.uint8)
    canvas[:, 30:] = 200  # one sharp edge down the middle
    maps = np.zeros((2, 8, 8), dtype=np.float32)
    maps[0, :, :4], maps[1, :, 4:] = 1.0, 1.0
    maps += rng.random(maps.shape).astype(np.float32) * 0.05
    truth = np.zeros((40, 60), dtype=np.uint8)
    item = ImageMaps("scene_x_0", maps, np.array([True, True]), np.array([3, 5]), canvas, truth)
    plain = predicted_label_map(item, 0.5)
    assert plain.shape == (40, 60) and set(np.unique(plain)) == {3, 5}
    for scores in (refiners.bilinear(maps, canvas), refiners.guided(maps, canvas), refiners.superpixels(maps, canvas)):
        assert scores.shape == (2, 40, 60)
        refined = predicted_label_map(item, 0.5, scores=scores)
        assert (refined[:, :28] == 3).all() and (refined[:, 32:] == 5).all()
    crf = crf_label_map(item, 0.5)
    assert (crf[:, :28] == 3).all() and (crf[:, 32:] == 5).all()
    assert (crf_label_map(item, 2.0) == 0).all()  # a background above every map wins every pixel
