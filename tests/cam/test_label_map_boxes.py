"""Boxes from label maps on hand-made maps: each kept slot's regions, in the maps' coordinates, padding never."""

import pytest
import torch

from camray.cam.box_source import boxes_from_label_maps
from camray.cam.label_map_boxes import label_map_components


def test_each_kept_slot_is_boxed_around_each_of_its_regions_in_the_maps_coordinates():
    """A 4 x 4 map grid, its label map on an 8 x 8 grid: slot 0 holds one region, slot 1 two, slot 2 (padding)
    one that must never become a box."""
    maps = torch.zeros(1, 3, 4, 4)
    maps[0, 0] = 0.5
    maps[0, 0, 0, 0] = 1.0  # slot 0's peak, inside its region
    maps[0, 1] = 0.25
    label_map = torch.zeros(1, 8, 8, dtype=torch.uint8)
    label_map[0, 0:3, 0:4] = 1  # slot 0: rows 0-2, columns 0-3
    label_map[0, 6:8, 0:2] = 2  # slot 1, twice, apart
    label_map[0, 5:8, 5:8] = 2
    label_map[0, 4, 6] = 3  # padding
    kept = torch.tensor([[True, True, False]])
    found = label_map_components(maps, label_map, kept, min_area_fraction=0.0, max_per_map=3)
    boxes = {(int(i), tuple(box.tolist())) for i, box in zip(found.map_index, found.boxes, strict=True)}
    assert boxes == {(0, (0.0, 0.0, 2.0, 1.5)), (1, (0.0, 3.0, 1.0, 4.0)), (1, (2.5, 2.5, 4.0, 4.0))}
    first = found.map_index.tolist().index(0)
    assert found.peak[first] == pytest.approx(float(maps[0, 0].max()), abs=0.2)  # bilinear, near the corner
    assert found.area[first] == pytest.approx(12 * 0.25)  # 12 label cells, a quarter map pixel each
    # Per class, the most massive regions only; a region smaller than the fraction goes unless it is the largest.
    one = label_map_components(maps, label_map, kept, min_area_fraction=0.0, max_per_map=1)
    assert one.map_index.tolist() == [0, 1] and one.boxes[1].tolist() == [2.5, 2.5, 4.0, 4.0]
    large = label_map_components(maps, label_map, kept, min_area_fraction=8 / 64, max_per_map=3)
    assert sorted(large.map_index.tolist()) == [0, 1]


def test_a_slot_that_wins_no_pixel_has_no_box_and_an_empty_batch_has_none():
    maps = torch.rand(2, 2, 4, 4)
    label_map = torch.zeros(2, 8, 8, dtype=torch.uint8)
    label_map[1, 2:4, 2:4] = 2
    found = label_map_components(maps, label_map, torch.ones(2, 2, dtype=torch.bool), 0.0, 3)
    assert found.map_index.tolist() == [3] and found.boxes.tolist() == [[1.0, 1.0, 2.0, 2.0]]
    none = label_map_components(maps[:0], label_map[:0], torch.ones(0, 2, dtype=torch.bool), 0.0, 3)
    assert none.map_index.numel() == 0


@pytest.mark.parametrize(
    ("source", "label_maps", "refine", "classes", "head", "expected"),
    [
        ("auto", True, "crf", "given", "softmax", True),
        ("auto", True, "crf", "predicted", "sigmoid", True),
        ("auto", True, "crf", "both", "sigmoid", True),
        ("auto", True, "crf", "predicted", "softmax", False),  # the top-k split one object
        ("auto", True, "crf", "both", "softmax", False),
        ("auto", True, "none", "given", "softmax", False),  # the rule alone: the maps, more coarsely
        ("auto", False, "crf", "given", "softmax", False),
        ("maps", True, "crf", "given", "softmax", False),
        ("label_maps", True, "none", "predicted", "softmax", True),
    ],
)
def test_auto_boxes_the_label_maps_where_they_are_refined_and_the_classes_are_distinct_objects(
    source, label_maps, refine, classes, head, expected
):
    assert boxes_from_label_maps(source, label_maps, refine, classes, head) is expected
