"""The box stage at fixed shapes against the eager steps it replaces: the bounded labelling against the eager
labelling and scipy's, the fixed-slot statistics against `components_from_maps`, and the whole stage, run eagerly
and compiled by inductor, against the annotator's eager steps on real photos."""

import dataclasses
import random

import numpy as np
import pytest
import torch
from scipy import ndimage

from camray.annotator import Annotator, box_stage_settings
from camray.cam.box_stage import (
    LABEL_ROUNDS,
    CapturedBoxStage,
    bucket,
    compact,
    dense_components,
    label_components_bounded,
    plain_box_stage,
)
from camray.cam.boxes import Components, components_from_maps, label_components, statistics_by_scatter
from camray.config import load_config
from camray.image.decode import decode_image


def _eager_parents(mask: torch.Tensor) -> torch.Tensor:
    """What `label_components_bounded` must reach: the eager labels minus one, each background pixel's own index."""
    n, h, w = mask.shape
    own = torch.arange(h * w, dtype=torch.float32).expand(n, h * w)
    labels = label_components(mask).view(n, h * w).float() - 1
    return torch.where(mask.view(n, h * w), labels, own)


def _scipy_parents(mask: torch.Tensor) -> torch.Tensor:
    """The same from scipy's labelling: each component's largest flat index (the eager labelling takes a round
    per pixel of a component's longest path, over 1,500 for a snake)."""
    n, h, w = mask.shape
    out = np.tile(np.arange(h * w, dtype=np.float32), (n, 1))
    for index, single in enumerate(mask.numpy()):
        labels, count = ndimage.label(single, structure=np.ones((3, 3), dtype=bool))
        flat = labels.ravel()
        largest = np.zeros(count + 1, dtype=np.int64)
        np.maximum.at(largest, flat, np.arange(h * w))
        out[index, flat > 0] = largest[flat[flat > 0]]
    return torch.from_numpy(out)


def _snake(side: int, vertical: bool = False) -> torch.Tensor:
    """Rows joined alternately at the right and left ends: one path through the whole map."""
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[::2, :] = True
    for row in range(1, side, 2):
        mask[row, side - 1 if row % 4 == 1 else 0] = True
    return mask.T.contiguous() if vertical else mask


def _spiral(side: int) -> torch.Tensor:
    """A square spiral of one-pixel corridors and walls."""
    mask = torch.zeros(side, side, dtype=torch.bool)
    top, left, bottom, right = 0, 0, side - 1, side - 1
    while top <= bottom and left <= right:
        mask[top, left : right + 1] = True
        mask[top : bottom + 1, right] = True
        if top + 2 <= bottom:
            mask[bottom, left : right + 1] = True
        if left + 2 <= right and top + 2 <= bottom:
            mask[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom and left < side:
            mask[top - 1, left] = True
    return mask


def _maze(cells: int, seed: int) -> torch.Tensor:
    """A random spanning tree of a `cells` x `cells` grid drawn as one-pixel corridors: one component whose
    paths wind through the whole map, in no order the pixel indices could help with."""
    rng = random.Random(seed)
    mask = torch.zeros(2 * cells, 2 * cells, dtype=torch.bool)
    seen, stack = {(0, 0)}, [(0, 0)]
    mask[0, 0] = True
    while stack:
        y, x = stack[-1]
        free = [
            (y + dy, x + dx)
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0))
            if 0 <= y + dy < cells and 0 <= x + dx < cells and (y + dy, x + dx) not in seen
        ]
        if not free:
            stack.pop()
            continue
        ny, nx = rng.choice(free)
        seen.add((ny, nx))
        stack.append((ny, nx))
        mask[2 * ny, 2 * nx] = mask[y + ny, x + nx] = True
    return mask


def _winding_masks() -> torch.Tensor:
    """56 x 56 maps (Lite0's and ResNet-50's grid at 224): snakes, a spiral and mazes in all eight orientations."""
    shapes = [_snake(56), _snake(56, vertical=True), _spiral(56), *(_maze(28, seed) for seed in range(6))]
    out = []
    for shape in shapes:
        for turn in range(8):
            turned = shape.rot90(turn % 4)
            out.append(turned.flip(0) if turn >= 4 else turned)
    return torch.stack(out).contiguous()


@pytest.mark.parametrize("density", [0.3, 0.45, 0.6])
@pytest.mark.parametrize("seed", range(3))
def test_bounded_labels_are_the_eager_labels(seed, density):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(8, 23, 31, generator=generator) < density
    parents, converged = label_components_bounded(mask)
    assert bool(converged)
    assert torch.equal(parents, _eager_parents(mask)) and torch.equal(parents, _scipy_parents(mask))


def test_winding_components_settle_within_the_bound():
    """The bound, tested: snakes, a spiral and mazes filling a 56 x 56 map (max-pool rounds alone need up to 1,540
    for them) settle within `LABEL_ROUNDS` (6; real maps need 2 to 4); one round short, `converged` says so."""
    mask = _winding_masks()
    expected = _scipy_parents(mask)
    needed = next(rounds for rounds in range(1, LABEL_ROUNDS + 1) if bool(label_components_bounded(mask, rounds)[1]))
    assert needed <= 6
    parents, converged = label_components_bounded(mask, needed)
    assert bool(converged) and torch.equal(parents, expected)
    short, settled = label_components_bounded(mask, needed - 1)
    assert not bool(settled) and not torch.equal(short, expected)


def _smooth_maps(seed: int, n: int = 6, h: int = 40, w: int = 48) -> torch.Tensor:
    """Smooth random fields with several blobs each, like real CAMs."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 1, 8, 8, generator=generator, dtype=torch.float64)
    return torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[:, 0].float()


def _assert_same(ours: Components, theirs: Components) -> None:
    assert torch.equal(ours.map_index, theirs.map_index)
    assert torch.equal(ours.boxes, theirs.boxes) and torch.equal(ours.area, theirs.area)
    assert torch.equal(ours.peak, theirs.peak)
    torch.testing.assert_close(ours.mass, theirs.mass, rtol=1e-5, atol=0)  # sums in another order


@pytest.mark.parametrize("max_per_map", [1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_dense_components_compact_to_the_eager_components(seed, max_per_map):
    maps = _smooth_maps(seed)
    threshold = torch.tensor([0.45, 0.5, 0.55, 0.6, 0.5, 2.0])  # the last map has no foreground
    mask = maps >= threshold.view(-1, 1, 1)
    parents, _ = label_components_bounded(mask)
    dense = dense_components(maps, mask, parents, min_area=12.0, max_per_map=max_per_map)
    assert tuple(dense.kept.shape) == (6, max_per_map) and not dense.kept[5].any()
    expected = components_from_maps(maps, threshold, min_area=12.0, max_per_map=max_per_map)
    _assert_same(compact(dense), expected)


def test_equal_masses_keep_the_order_of_the_devices_eager_path(monkeypatch):
    """Two components of exactly equal mass: ordered by their last pixel's index, as the GPU's eager statistics
    order them (OpenCV, on the CPU, orders them by their first pixel)."""
    maps = torch.zeros(1, 12, 12)
    maps[0, 1:4, 7:10] = 0.75  # last pixel (3, 9): index 45
    maps[0, 2:5, 1:4] = 0.75  # last pixel (4, 3): index 51, though its first pixel comes later
    mask = maps >= 0.5
    dense = dense_components(maps, mask, label_components_bounded(mask)[0], min_area=1.0, max_per_map=3)
    monkeypatch.setattr("camray.cam.boxes.statistics_by_opencv", statistics_by_scatter)
    expected = components_from_maps(maps, 0.5, max_per_map=3)
    assert compact(dense).boxes.tolist() == expected.boxes.tolist() == [[7.0, 1.0, 10.0, 4.0], [1.0, 2.0, 4.0, 5.0]]


def test_batches_pad_to_a_few_sizes():
    assert [bucket(n) for n in (1, 16, 17, 200, 256, 257)] == [16, 16, 32, 256, 256, 512]


@pytest.fixture(scope="module")
def forward_of_photos(photos, _lite0_as_loaded):
    """One forward pass of the bundled Lite0 over the sample photos, with the settings of `balanced`, and what the
    annotator's eager steps make of it."""
    import copy

    config = load_config(preset="balanced")
    annotator = Annotator(copy.deepcopy(_lite0_as_loaded), config.cam, config.boxes, torch.device("cpu"))
    decoded = [decode_image(data, 224, "letterbox") for data in photos.values()]
    pixels = torch.from_numpy(np.stack([image.pixels for image in decoded]))
    valid = torch.tensor([[image.valid_width, image.valid_height] for image in decoded])
    with torch.inference_mode():
        forward = annotator._forward(annotator.prepare(pixels, valid), True)
        reference = annotator.annotate(pixels, valid)
    keep = annotator._keeps_plain(forward.choice.predicted_scores)
    assert 0 < int(keep.sum()) < len(decoded)  # both kinds of image: plain and refined maps
    return forward, keep, valid, box_stage_settings(config.cam, config.boxes), reference


def _check_stage(out, reference) -> None:
    b, k = reference.class_ids.shape
    assert torch.equal(out.maps, reference.maps) and torch.equal(out.thresholds.view(b, k), reference.thresholds)
    assert bool(out.converged)
    _assert_same(compact(out.components), reference.components)


def test_the_stage_gives_the_annotators_eager_maps_and_boxes(forward_of_photos):
    forward, keep, valid, settings, reference = forward_of_photos
    with torch.inference_mode():
        _check_stage(
            plain_box_stage(forward.raw_maps.float(), forward.activation, keep, valid, 224, settings), reference
        )
        padded = CapturedBoxStage(settings, torch.device("cpu"))  # padded to 16 images, as on a GPU
        _check_stage(padded(forward.raw_maps.float(), forward.activation, keep, valid, 224), reference)


def test_the_stage_compiled_by_inductor_gives_the_same_maps_and_boxes(forward_of_photos):
    """What `model.compile` runs on a GPU, compiled here by inductor for the CPU: one compile, at 16 images."""
    forward, keep, valid, settings, reference = forward_of_photos
    stage = CapturedBoxStage(settings, torch.device("cpu"), compiled=True)
    _check_stage(stage(forward.raw_maps.float(), forward.activation, keep, valid, 224), reference)
    # The second batch of the size reuses the compiled code: a permutation, so no output is left over.
    order = torch.arange(keep.numel()).flip(0)
    again = stage(forward.raw_maps.float()[order], forward.activation[order], keep[order], valid[order], 224)
    assert torch.equal(again.maps, reference.maps[order])


def test_a_size_that_fails_to_compile_is_captured_uncompiled(forward_of_photos):
    """A compiled piece that raises (a fault injected in its place): the padded size runs the uncompiled steps,
    with the same outputs, and says why."""
    forward, keep, valid, settings, reference = forward_of_photos
    stage = CapturedBoxStage(settings, torch.device("cpu"), compiled=True)

    def fails_to_compile(*args, **kwargs):
        raise RuntimeError("inductor: lowering failed")

    stage._steps = dataclasses.replace(stage._steps, statistics=fails_to_compile)
    _check_stage(stage(forward.raw_maps.float(), forward.activation, keep, valid, 224), reference)
    assert stage.failures() == [] and len(stage.uncompiled) == 1
    assert "compiled box stage could not be captured at 16 images: inductor: lowering failed" in stage.uncompiled[0]


def test_a_stage_short_of_rounds_says_so(forward_of_photos):
    forward, keep, valid, settings, reference = forward_of_photos
    short = dataclasses.replace(settings, label_rounds=1)
    out = plain_box_stage(forward.raw_maps.float(), forward.activation, keep, valid, 224, short)
    assert not bool(out.converged)
    assert torch.equal(out.maps, reference.maps)  # only the components are unfinished
