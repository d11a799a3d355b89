"""The label-map rule on hand-made maps, and its per-class RLEs against full-resolution encodings."""

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from camray.cam.label_maps import IGNORE, label_map_rles, label_maps, resize_label_map
from camray.result_rows import mask_rle


def _maps() -> torch.Tensor:
    """One image, three slots on a 3 x 3 grid; slot 2 would win every pixel, were it valid."""
    maps = torch.zeros(1, 3, 3, 3)
    maps[0, 0] = torch.tensor([[0.9, 0.2, 0.0], [0.5, 0.5, 0.1], [0.0, 0.0, 0.0]])
    maps[0, 1] = torch.tensor([[0.1, 0.8, 0.0], [0.5, 0.3, 0.25], [0.0, 0.0, 0.0]])
    maps[0, 2] = 1.0
    return maps


def test_argmax_with_background_and_ties_to_the_lowest_slot():
    out = label_maps(_maps(), torch.tensor([[True, True, False]]), background=0.3)
    expected = torch.tensor([[1, 2, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.uint8)  # (1, 0) ties 0.5 / 0.5: slot 0
    assert out.dtype == torch.uint8
    assert torch.equal(out[0], expected)


def test_ignore_band_between_the_two_thresholds():
    out = label_maps(_maps(), torch.tensor([[True, True, False]]), background=0.2, ignore_below=0.6)
    # >= 0.6: its class; 0.2 <= max < 0.6: ignore; below 0.2: background.
    expected = torch.tensor([[1, 2, 0], [IGNORE, IGNORE, IGNORE], [0, 0, 0]], dtype=torch.uint8)
    assert torch.equal(out[0], expected)


def test_invalid_slots_never_win_and_images_without_classes_are_background():
    maps = torch.rand(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    valid = torch.tensor([[True, False, True, False], [False, False, False, False], [False, False, False, True]])
    out = label_maps(maps, valid, background=0.0)
    assert set(out[0].unique().tolist()) <= {1, 3}
    assert torch.equal(out[1], torch.zeros(5, 5, dtype=torch.uint8))
    assert torch.equal(out[2], torch.full((5, 5), 4, dtype=torch.uint8))
    # The rule, pixel by pixel, as an obvious loop.
    for b in range(3):
        for y in range(5):
            for x in range(5):
                slots = [k for k in range(4) if valid[b, k]]
                best = max(slots, key=lambda k: (maps[b, k, y, x], -k)) if slots else None
                assert out[b, y, x] == (0 if best is None else best + 1)


def test_bad_arguments_are_refused():
    maps = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match="`ignore_below`"):
        label_maps(maps, torch.ones(1, 2, dtype=torch.bool), background=0.4, ignore_below=0.3)
    with pytest.raises(TypeError, match="`valid`"):
        label_maps(maps, torch.ones(1, 2), background=0.4)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        label_maps(maps, torch.ones(2, 2, dtype=torch.bool), background=0.4)


@pytest.mark.parametrize(("width", "height"), [(451, 300), (37, 90), (7, 7), (1, 5)])
def test_each_slot_rle_decodes_to_the_image_and_the_masks_never_overlap(width, height):
    grid = torch.rand(1, 3, 9, 9, generator=torch.Generator().manual_seed(width))
    label_map = label_maps(grid, torch.tensor([[True, True, True]]), background=0.5, ignore_below=0.7)[0].numpy()
    rles = label_map_rles(label_map, 3, width, height)
    full = resize_label_map(label_map, width, height)
    decoded = np.stack([coco_mask.decode(rle) for rle in rles]).astype(bool)
    assert decoded.shape == (3, height, width)
    assert decoded.sum(axis=0).max() <= 1
    for slot in range(3):
        assert np.array_equal(decoded[slot], full == slot + 1)
        # The same as encoding the full-resolution mask, which the function never builds.
        assert rles[slot]["counts"] == coco_mask.encode(np.asfortranarray(full == slot + 1))["counts"].decode()
    assert not decoded[:, (full == 0) | (full == IGNORE)].any()


def test_a_two_label_map_gives_the_top1_mask_rle():
    """`label_map_rles` generalises `result_rows.mask_rle` (one class, no ignore) to several classes."""
    mask = np.random.default_rng(3).random((56, 56)) > 0.6
    assert label_map_rles(mask.astype(np.uint8), 1, 500, 375)[0] == mask_rle(mask, 500, 375)


def test_non_square_grids_and_absent_slots():
    label_map = np.array([[0, 1, 1, 2], [0, 0, 2, 2]], dtype=np.uint8)
    rles = label_map_rles(label_map, 3, 8, 4)
    assert np.array_equal(coco_mask.decode(rles[0]), np.kron(label_map == 1, np.ones((2, 2), dtype=np.uint8)))
    assert coco_mask.decode(rles[2]).sum() == 0
