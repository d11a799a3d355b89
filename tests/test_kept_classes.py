"""Every localization mode maps the kept classes, in process, without Ray: the plain, tiled (`stitch`) and windows
(`detect`) modes given an image's labels map exactly those classes whatever their rank, the map of a given class
is the map the same mode makes of it when it is predicted, and padding never reaches the rows."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from test_predictor import _batch

from camray.annotator import Annotator, decode_side
from camray.config import load_config
from camray.result_rows import RowContext, result_table

TABBY, EGYPTIAN_CAT, COFFEE_MUG, ESPRESSO = 281, 285, 504, 967
NAMES = ["chelsea.png", "coffee.png"]


def _annotator(lite0, **overrides) -> Annotator:
    config = load_config(overrides={"sink.uri": "unused", **overrides})
    return Annotator(copy.deepcopy(lite0), config.cam, config.boxes, torch.device("cpu"), tiling=config.tiling)


@pytest.mark.parametrize(
    "mode",
    [{}, {"tiling.enabled": True}, {"tiling.enabled": True, "tiling.mode": "windows"}],
    ids=["plain", "stitch", "windows"],
)
def test_given_classes_are_mapped_whatever_their_rank(lite0, photos, mode):
    given_run = _annotator(lite0, **{"cam.classes": "given", **mode})
    predicted_run = _annotator(lite0, **{"cam.top_k": 1, **mode})
    batch = _batch(photos, NAMES, size=decode_side(given_run.mode.tiling, 224) if mode else 224)
    pixels = torch.from_numpy(batch["pixels"])
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    # chelsea: its top-1 and a mug it does not show; coffee: the mug and the espresso.
    given = torch.tensor([[EGYPTIAN_CAT, COFFEE_MUG], [ESPRESSO, COFFEE_MUG]])
    out = given_run.annotate(pixels, valid, given)
    assert out.kept.all() and out.given.all()
    for image in range(2):
        assert set(out.class_ids[image].tolist()) == set(given[image].tolist())
        assert out.scores[image].tolist() == sorted(out.scores[image].tolist(), reverse=True)
    assert out.predicted_ids[0, 0] == EGYPTIAN_CAT and COFFEE_MUG not in out.predicted_ids[0].tolist()
    # The map of a given class is the one the mode makes of it as a prediction (chelsea's top-1).
    alone = predicted_run.annotate(pixels[:1], valid[:1])
    first = out.class_ids[0].tolist().index(EGYPTIAN_CAT)
    assert alone.class_ids[0, 0] == EGYPTIAN_CAT
    if "windows" not in mode.get("tiling.mode", ""):  # windows stitch each class's tiles as well
        assert torch.allclose(out.maps[0, first], alone.maps[0, 0], atol=1e-5)
    k = out.class_ids.shape[1]
    boxed = {(int(i) // k, int(out.class_ids.flatten()[i])) for i in out.components.map_index}
    assert boxed <= {(0, EGYPTIAN_CAT), (0, COFFEE_MUG), (1, ESPRESSO), (1, COFFEE_MUG)}
    assert (0, EGYPTIAN_CAT) in boxed and (1, COFFEE_MUG) in boxed


def test_both_adds_the_labels_to_the_predictions_and_padding_stays_out_of_the_rows(lite0, photos):
    annotator = _annotator(lite0, **{"cam.classes": "both", "cam.top_k": 2})
    batch = _batch(photos, NAMES)
    pixels = torch.from_numpy(batch["pixels"])
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    given = torch.tensor([[COFFEE_MUG, -1], [-1, -1]])  # chelsea one label; coffee none
    out = annotator.annotate(pixels, valid, given)
    chelsea, coffee = (set(out.class_ids[i][out.kept[i]].tolist()) for i in range(2))
    assert chelsea == {*out.predicted_ids[0].tolist(), COFFEE_MUG} and coffee == set(out.predicted_ids[1].tolist())
    assert out.kept[1].sum() == 2 and out.class_ids.shape[1] == 3  # coffee's third slot is padding
    categories = pa.array(annotator.spec.categories)
    context = RowContext("efficientnet_lite0", annotator.method, "fp", "run", categories, True)
    images = {name: batch[name] for name in ("image_uri", "source_version", "content_sha256", "width", "height")}
    rows = result_table(out, {**images, "io_retries": batch["io_retries"]}, context, [[COFFEE_MUG], None])
    first, second = rows.to_pylist()
    assert {cam["class_id"] for cam in first["cams"]} == chelsea and len(second["cams"]) == 2
    assert {box["class_id"] for box in second["boxes"]} <= coffee
    assert first["labels"] == [{"class_id": COFFEE_MUG, "label": "coffee mug"}] and second["labels"] is None


def _label_annotator(lite0, **overrides) -> Annotator:
    config = load_config(overrides={"sink.uri": "unused", **overrides})  # `balanced`: the CRF's label maps
    return Annotator(
        copy.deepcopy(lite0), config.cam, config.boxes, torch.device("cpu"), tiling=config.tiling, masks=config.masks
    )


def _region_boxes(label_map: np.ndarray, slot: int, scale: float) -> set[tuple[float, ...]]:
    """The boxes of the 8-connected regions of `slot` in `label_map`, in the maps' coordinates."""
    count, _, stats, _ = cv2.connectedComponentsWithStats((label_map == slot + 1).astype(np.uint8), connectivity=8)
    return {tuple(float(v) * scale for v in (x, y, x + w, y + h)) for x, y, w, h, _ in stats[1:count]}


@pytest.mark.parametrize("mode", [{}, {"tiling.enabled": True}], ids=["plain", "stitch"])
def test_given_classes_are_boxed_around_their_label_map_regions(lite0, photos, mode):
    """Under the CRF's label maps, a given class's boxes are its regions of the image's label map; the same
    classes predicted by a softmax head, or `boxes.source: maps`, keep the thresholded maps' boxes."""
    run = _label_annotator(lite0, **{"cam.classes": "given", **mode})
    assert run.boxes_from_label_maps
    assert not _label_annotator(lite0, **mode).boxes_from_label_maps
    maps_run = _label_annotator(lite0, **{"cam.classes": "given", "boxes.source": "maps", **mode})
    assert not maps_run.boxes_from_label_maps
    batch = _batch(photos, NAMES, size=decode_side(run.mode.tiling, 224) if mode else 224)
    pixels = torch.from_numpy(batch["pixels"])
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    given = torch.tensor([[EGYPTIAN_CAT, COFFEE_MUG], [COFFEE_MUG, -1]])
    out = run.annotate(pixels, valid, given)
    assert out.label_maps is not None
    k, grid = out.class_ids.shape[1], out.maps.shape[-1]
    scale = grid / out.label_maps.shape[-1]
    written: dict[int, set[tuple[float, ...]]] = {}
    for index, box in zip(out.components.map_index.tolist(), out.components.boxes.tolist(), strict=True):
        written.setdefault(index, set()).add(tuple(box))
    for image, slot in torch.nonzero(out.kept).tolist():
        regions = _region_boxes(out.label_maps[image].numpy(), slot, scale)
        boxes = written.pop(image * k + slot, set())
        # The regions the fragment bound leaves, three at most; every class that won pixels is boxed.
        assert boxes <= regions and (1 <= len(boxes) <= 3 if regions else not boxes)
    assert not written  # padding is never boxed
    cat = out.class_ids[0].tolist().index(EGYPTIAN_CAT)
    assert (out.label_maps[0] == cat + 1).any()  # the cat photo's cat won pixels, so it was boxed above


@pytest.mark.parametrize("source", ["maps", "label_maps"])
def test_a_batch_that_keeps_no_class_has_no_box_and_no_map(lite0, photos, tmp_path, source):
    """A sigmoid head whose every score is below `cam.min_score` keeps no class of any image of a batch: the rows
    hold the predictions and nothing else, by either box source."""
    from camray.models import resolve_setup

    state = {key: value.clone() for key, value in lite0.module.state_dict().items()}
    for key in ("classifier.1.weight", "classifier.1.bias"):
        state[key] = state[key][:20].clone()
    torch.save(state, tmp_path / "head.pth")
    overrides = {"model.weights": str(tmp_path / "head.pth"), "model.head": "sigmoid", "cam.min_score": 0.9999}
    config = load_config(overrides={"sink.uri": "unused", "boxes.source": source, **overrides})
    loaded = resolve_setup(config.model)
    annotator = Annotator(loaded, config.cam, config.boxes, torch.device("cpu"), masks=config.masks)
    batch = _batch(photos, NAMES)
    pixels = torch.from_numpy(batch["pixels"])
    valid = torch.from_numpy(np.stack([batch["valid_width"], batch["valid_height"]], 1))
    out = annotator.annotate(pixels, valid)
    assert not out.kept.any() and out.components.map_index.numel() == 0
    assert out.predicted_ids.shape == (2, 5) and bool((out.predicted_scores < 0.9999).all())
    context = RowContext("efficientnet_lite0", annotator.method, "fp", "run", pa.array(loaded.setup.class_names), True)
    images = {name: batch[name] for name in ("image_uri", "source_version", "content_sha256", "width", "height")}
    for row in result_table(out, {**images, "io_retries": batch["io_retries"]}, context, [None, None]).to_pylist():
        assert (row["cams"], row["boxes"], len(row["predictions"])) == ([], [], 5)
