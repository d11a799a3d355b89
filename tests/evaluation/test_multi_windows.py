"""The windows mode's pure parts (`camray.cam.multi`) on hand-made tensors."""

from __future__ import annotations

import pytest
import torch

from camray.cam.multi import drop_parts, merge_boxes, propose_classes, window_boxes_to_image, window_proposes


def test_tiles_propose_their_confident_top1_and_the_whole_top1_stays_first() -> None:
    # Two images, five classes; windows: the two whole images, then tiles of image 0, 0, 1.
    probs = torch.tensor(
        [
            [0.50, 0.20, 0.10, 0.10, 0.10],  # image 0 as a whole: class 0
            [0.10, 0.10, 0.60, 0.10, 0.10],  # image 1 as a whole: class 2
            [0.05, 0.05, 0.05, 0.80, 0.05],  # a tile of image 0 sure of class 3, above the whole's top-1
            [0.05, 0.05, 0.05, 0.05, 0.25],  # a tile of image 0 unsure of class 4: proposes nothing at 0.3
            [0.90, 0.02, 0.04, 0.02, 0.02],  # a tile of image 1 sure of class 0
        ]
    )
    window_image = torch.tensor([0, 1, 0, 0, 1])
    class_ids, scores = propose_classes(probs, window_image, images=2, k=3, propose_score=0.3)
    assert class_ids[0].tolist() == [0, 3, 1] and scores[0].tolist() == pytest.approx([0.5, 0.8, 0.2])
    assert class_ids[1].tolist()[:2] == [2, 0] and scores[1, 1].item() == pytest.approx(0.9)
    unproposed, _ = propose_classes(probs, window_image, images=2, k=3, propose_score=0.95)
    assert unproposed.tolist() == probs[:2].topk(3).indices.tolist()  # no tile sure enough: the whole top-k

    window_probs = probs[torch.arange(5).view(-1, 1), class_ids[window_image]]
    proposes = window_proposes(window_probs, images=2, propose_score=0.3)
    assert proposes[0].tolist() == [True, False, False]  # the whole image: its top-1 (0.5), not 0.8's class (0.1)
    assert proposes[2].tolist() == [False, True, False]  # the sure tile boxes its own class only
    assert not proposes[3].any()


def test_window_boxes_land_on_the_image_grid() -> None:
    # A tile at (100, 50) of 224 x 224 canvas pixels, its map on a 56 grid; the image spans 400 x 300 canvas pixels
    # and its maps a 56 grid. A box of cells 14..28 x 0..56 of the tile is canvas x 156..212, y 50..274.
    box = window_boxes_to_image(
        torch.tensor([[14.0, 0.0, 28.0, 56.0]]),
        56,
        torch.tensor([[100, 50, 224, 224]]),
        torch.tensor([[400, 300]]),
        56,
    )
    expected = torch.tensor([[156 * 56 / 400, 50 * 56 / 300, 212 * 56 / 400, 274 * 56 / 300]])
    torch.testing.assert_close(box, expected)


def _iou(a, b) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _slow_merge(boxes, scores, image, classes, iou, cross):
    """Greedy NMS by hand: best first, a box goes if a kept box of its image (and class) overlaps it too much."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if not any(image[j] == image[i] and classes[j] == classes[i] and _iou(boxes[i], boxes[j]) > iou for j in kept):
            kept.append(i)
    if cross is None:
        return kept
    final: list[int] = []
    for i in kept:
        if not any(image[j] == image[i] and _iou(boxes[i], boxes[j]) > cross for j in final):
            final.append(i)
    return final


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cross", [None, 0.6])
def test_merge_matches_greedy_nms_by_hand(seed: int, cross: float | None) -> None:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(40, 2, generator=generator) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(40, 2, generator=generator) * 30], dim=1)
    scores = torch.rand(40, generator=generator)
    image = torch.randint(0, 2, (40,), generator=generator)
    classes = torch.randint(0, 3, (40,), generator=generator)
    keep = merge_boxes(boxes, scores, image, classes, 0.5, cross)
    expected = _slow_merge(boxes.tolist(), scores.tolist(), image.tolist(), classes.tolist(), 0.5, cross)
    assert keep.tolist() == expected


def test_tile_parts_inside_a_whole_image_box_of_their_class_are_dropped() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 100.0, 100.0],  # the whole image's box of class 1
            [10.0, 10.0, 40.0, 40.0],  # a tile's cut of it: dropped
            [10.0, 10.0, 40.0, 40.0],  # the same place, another class: kept
            [90.0, 90.0, 150.0, 150.0],  # a tile's box mostly outside it: kept
            [10.0, 10.0, 40.0, 40.0],  # inside, but in the other image: kept
        ]
    )
    keep = drop_parts(
        boxes,
        torch.tensor([0, 0, 0, 0, 1]),
        torch.tensor([1, 1, 2, 1, 1]),
        torch.tensor([False, True, True, True, True]),
        0.5,
    )
    assert keep.tolist() == [True, False, True, True, True]
