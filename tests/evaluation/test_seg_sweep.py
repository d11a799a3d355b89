"""The label-map sweep's own parts: the annotator mapping the classes it is handed with its label stage recorded, and
the label stages and refinements the sweep scores, on shapes with a known answer."""

from __future__ import annotations

import numpy as np
import torch

from camray.annotator import CRF_UPSAMPLE
from camray.config import load_config
from camray.evaluation import refiners
from camray.evaluation.seg_sweep import (
    AUTO,
    ImageMaps,
    RecordingAnnotator,
    given_tensor,
    job_label_map,
    predicted_label_map,
    reference_crf_label_map,
)
from camray.image.decode import decode_image


def test_the_annotator_maps_the_classes_it_is_handed_and_records_its_label_stage(lite0, photos) -> None:
    config = load_config(overrides={"sink.uri": "unused", "cam.classes": "given"}, preset="accurate")
    annotator = RecordingAnnotator(
        lite0, config.cam, config.boxes, torch.device("cpu"), tiling=config.tiling, masks=config.masks
    )
    decoded = [decode_image(photos[name], annotator.canvas_size, "letterbox") for name in ("chelsea.png", "coffee.png")]
    pixels = torch.from_numpy(np.stack([d.pixels for d in decoded]))
    valid = torch.tensor([[d.valid_width, d.valid_height] for d in decoded])
    given = given_tensor([[967, 281], [281]])  # espresso on the cat: ranked far below the top-k
    with torch.inference_mode():
        out = annotator.annotate(pixels, valid, given)
    assert sorted(out.class_ids[0].tolist()) == [281, 967] and out.kept.tolist() == [[True, True], [True, False]]
    ((scores, kept),) = annotator.recorded
    assert scores.shape == out.maps.shape and torch.equal(kept, out.kept)
    side = out.maps.shape[-1] * CRF_UPSAMPLE  # `accurate` decides its label maps by the CRF, on a finer grid
    assert out.label_maps.shape == (2, side, side) and out.label_maps.dtype == torch.uint8
    assert set(out.label_maps[1].unique().tolist()) <= {0, 1}  # the coffee keeps one class: no slot 2


def test_label_stages_and_refinements_keep_the_rule_and_the_image_size() -> None:
    """Two objects in the outer thirds of a 60 x 40 image, background between: every label stage and refinement
    labels them so, at the image's size."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:40, :22], pixels[:40, 38:60] = (200, 40, 40), (40, 40, 200)  # the image is the top-left 60 x 40
    maps = np.zeros((2, 8, 8), dtype=np.float32)
    maps[0, :, :3], maps[1, :, 5:] = 1.0, 1.0
    maps += rng.random(maps.shape).astype(np.float32) * 0.05
    truth = np.zeros((40, 60), dtype=np.uint8)
    item = ImageMaps("scene_x_0", maps, np.array([True, True]), np.array([3, 5]), pixels, (60, 40), truth)

    def as_expected(labels: np.ndarray) -> bool:
        return (
            labels.shape == (40, 60)
            and (labels[:, :20] == 3).all()
            and (labels[:, 40:] == 5).all()
            and (labels[:, 25:35] == 0).all()
        )

    for background in (0.5, AUTO):
        for refine in ("none", "crf"):
            assert as_expected(job_label_map(item, background, refine)), (background, refine)
    assert (job_label_map(item, 1.0, "crf") == 0).all()  # a background above every map wins every cell
    canvas = item.canvas
    for scores in (refiners.bilinear(maps, canvas), refiners.guided(maps, canvas), refiners.superpixels(maps, canvas)):
        assert scores.shape == (2, 40, 60) and as_expected(predicted_label_map(item, 0.5, scores))
    assert as_expected(reference_crf_label_map(item, 0.5))
    assert (reference_crf_label_map(item, 2.0) == 0).all()
