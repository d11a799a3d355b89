"""Batched components and boxes checked against scipy's labelling and a slow per-component loop (scipy is the
reference here only; the job labels with OpenCV on the CPU and by propagation on other devices)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from camray.cam.boxes import components_from_maps, label_components, statistics_by_scatter

EIGHT = np.ones((3, 3), dtype=bool)


def _random_masks(seed: int, n: int = 6, h: int = 23, w: int = 31, density: float = 0.45) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, generator=generator) < density


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    flat = labels.ravel()
    return {frozenset(np.flatnonzero(flat == value).tolist()) for value in np.unique(flat) if value != 0}


@pytest.mark.parametrize("seed", range(5))
def test_labels_partition_like_scipy(seed):
    masks = _random_masks(seed)
    labels = label_components(masks).numpy()
    for mask, ours in zip(masks.numpy(), labels, strict=True):
        reference, _ = ndimage.label(mask, structure=EIGHT)
        assert _partition(ours) == _partition(reference)
        assert ((ours > 0) == mask).all()
        for component in _partition(ours):  # its label: the largest flat index of its pixels, plus one
            assert {ours.ravel()[index] for index in component} == {max(component) + 1}


def test_snake_shaped_component_converges():
    mask = torch.zeros(1, 21, 21, dtype=torch.bool)
    mask[0, ::2, :] = True  # rows joined alternately at the right and left ends: one long path
    for row in range(1, 21, 2):
        mask[0, row, 20 if row % 4 == 1 else 0] = True
    assert label_components(mask)[mask].unique().numel() == 1
    assert label_components(mask, check_every=3)[mask].unique().tolist() == [int(mask.flatten().nonzero().max()) + 1]


def _slow_components(maps: np.ndarray, threshold: float, min_area: float, max_per_map: int):
    out = []
    for index, heat in enumerate(maps):
        labels, count = ndimage.label(heat >= threshold, structure=EIGHT)
        found = []
        for value in range(1, count + 1):
            ys, xs = np.nonzero(labels == value)
            values = heat[ys, xs]
            found.append((values.sum(), len(ys), values.max(), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
        found.sort(key=lambda item: -item[0])
        for rank, (mass, area, peak, box) in enumerate(found[:max_per_map]):
            if rank == 0 or area >= min_area:
                out.append((index, box, area, mass, peak))
    return out


@pytest.mark.parametrize("path", ["opencv", "scatter"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
@pytest.mark.parametrize("seed", range(3))
def test_components_match_slow_reference(seed, dtype, tolerance, path, monkeypatch):
    if path == "scatter":  # the GPU path's labelling and statistics, exercised on the CPU
        monkeypatch.setattr("camray.cam.boxes.statistics_by_opencv", statistics_by_scatter)
    generator = torch.Generator().manual_seed(seed)
    # Smooth random fields have several blobs per map, like real CAMs.
    noise = torch.rand(5, 1, 8, 8, generator=generator, dtype=torch.float64)
    maps = torch.nn.functional.interpolate(noise, size=(40, 48), mode="bicubic", align_corners=False)[:, 0]
    maps = maps.to(dtype)
    result = components_from_maps(maps, threshold=0.55, min_area=12.0, max_per_map=3)
    expected = _slow_components(maps.double().numpy(), 0.55, 12.0, 3)
    assert result.map_index.tolist() == [item[0] for item in expected]
    assert result.boxes.tolist() == [list(map(float, item[1])) for item in expected]
    assert result.area.tolist() == [float(item[2]) for item in expected]
    np.testing.assert_allclose(result.mass.double().numpy(), [item[3] for item in expected], rtol=tolerance)
    np.testing.assert_allclose(result.peak.double().numpy(), [item[4] for item in expected], rtol=tolerance)


def test_per_map_thresholds_and_empty_maps():
    maps = torch.zeros(3, 10, 10)
    maps[0, 2:5, 3:7] = 1.0
    maps[1, 6:9, 1:3] = 0.4
    result = components_from_maps(maps, threshold=torch.tensor([0.5, 0.3, 0.5]))
    assert result.map_index.tolist() == [0, 1]
    assert result.boxes.tolist() == [[3.0, 2.0, 7.0, 5.0], [1.0, 6.0, 3.0, 9.0]]


def test_valid_region_excludes_padding():
    maps = torch.ones(1, 8, 8)
    valid = torch.zeros(1, 8, 8, dtype=torch.bool)
    valid[:, :5, :6] = True
    result = components_from_maps(maps, threshold=0.5, valid=valid)
    assert result.boxes.tolist() == [[0.0, 0.0, 6.0, 5.0]]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mask"):
        label_components(torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_per_map"):
        components_from_maps(torch.zeros(1, 4, 4), 0.5, max_per_map=0)


def test_maps_without_foreground_give_no_components():
    result = components_from_maps(torch.zeros(2, 6, 6), threshold=0.5, max_per_map=3)
    assert result.map_index.numel() == 0 and tuple(result.boxes.shape) == (0, 4)


def test_no_maps_give_no_components():
    """A batch whose images keep no class (a sigmoid head below its bound) asks for the boxes of no map."""
    found = components_from_maps(torch.zeros(0, 8, 8), 0.5, max_per_map=3)
    assert found.map_index.numel() == 0 and found.boxes.shape == (0, 4)
