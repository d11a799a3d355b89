"""The segmentation set: real photos and cut-outs with pixel truth, built small, read back as a user reads it."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from camray.cam.label_maps import IGNORE
from camray.evaluation.evalset import OBJECTS
from camray.evaluation.evaluate import edge_iou
from camray.evaluation.outlines import TRACED
from camray.evaluation.segset import CLASSES, build, photos, scenes, split_of, value_of
from camray.outputs.label_png import read_classes, read_label_png


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build with a scene a texture (the photos and four scenes, about 5 s)."""
    return build(tmp_path_factory.mktemp("segset"), per_texture=1).parent


def test_build_writes_images_truth_classes_and_a_manifest_with_labels(built) -> None:
    assert read_classes(built / "truth" / "classes.txt") == dict(enumerate(CLASSES, start=1))
    with (built / "images.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 + 4 and set(rows[0]) == {"uri", "labels"}
    for row in rows:
        image = Image.open(row["uri"])
        truth = read_label_png(built / "truth" / f"{image.filename.rsplit('/', 1)[-1]}")
        assert truth.shape == (image.height, image.width)
        present = set(np.unique(truth).tolist()) - {0, IGNORE}
        assert row["labels"].split("|") == [CLASSES[v - 1] for v in sorted(present)]
    by_name = {row["uri"].rsplit("/", 1)[-1].removesuffix(".png"): row["labels"] for row in rows}
    assert by_name["photo_voc"] == "person|bottle|chair|diningtable"
    assert len(by_name["photo_arc"].split("|")) == 8
    scene_labels = [labels.split("|") for name, labels in by_name.items() if name.startswith("scene_")]
    assert [len(labels) for labels in scene_labels] == [2, 2, 2, 2]  # scene 0 of each texture holds two objects
    assert {split_of(name) for name in by_name} == {"dev", "test"}


def test_ignored_pixels_are_where_annotators_were_unsure() -> None:
    truths = {sample.name: sample.truth for sample in photos()}
    voc = truths["photo_voc"]
    void = voc == IGNORE
    assert 0.02 < void.mean() < 0.2  # VOC's void border, rebuilt
    assert not (truths["photo_arc"] == IGNORE).any()  # ARC's masks are exact, no border
    cat = truths["photo_cat"]
    assert (cat == value_of("cat")).mean() > 0.6
    # The band follows the traced outline inside the photo, not the photo's own edges.
    assert not (cat[-1, :] == IGNORE)[:200].any() and (cat == IGNORE).any()


def test_traced_outlines_agree_with_the_hand_drawn_boxes() -> None:
    """Two annotations made apart, the evaluation set's boxes and these outlines, frame the same objects: each
    outline lies in its box (give or take 6% of its size), and fills it but for the rocket's, drawn around its
    tower."""
    for key, item in TRACED.items():
        xs, ys = zip(*item.polygon(), strict=True)
        x0, y0, x1, y1 = OBJECTS[key].box
        slack = 0.06 * max(x1 - x0, y1 - y0)
        assert x0 - slack <= min(xs) and y0 - slack <= min(ys), key
        assert max(xs) <= x1 + slack and max(ys) <= y1 + slack, key
        iou = edge_iou((min(xs), min(ys), max(xs), max(ys)), OBJECTS[key].box)
        assert iou > (0.45 if key == "rocket" else 0.75), key


def test_scenes_are_deterministic_and_their_truth_is_what_was_pasted() -> None:
    first, second = next(scenes(7, 1)), next(scenes(7, 1))
    assert np.array_equal(first.rgb, second.rgb) and np.array_equal(first.truth, second.truth)
    other = next(scenes(8, 1))
    assert not np.array_equal(first.truth, other.truth)
    assert not (first.truth == IGNORE).any()
    # Off the objects the canvas is the texture photo untouched.
    from camray.evaluation.evalset import TEXTURES, _texture

    texture = np.asarray(_texture(TEXTURES[0], first.rgb.shape[1::-1]))
    background = first.truth == 0
    assert np.array_equal(first.rgb[background], texture[background])
    assert (first.rgb[~background] != texture[~background]).any(axis=-1).mean() > 0.5
