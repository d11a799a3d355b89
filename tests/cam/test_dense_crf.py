"""The dense CRF on the label map's grid: its permutohedral filtering against the exact Gaussian sums, its mean field
against the reference implementation (pydensecrf) on the same features, and what it must keep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camray.cam.dense_crf import CrfSettings, Lattice, cell_colours, dense_crf
from camray.cam.label_maps import crf_label_maps, label_maps, own_background


def _exact_filter(features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The slow, obvious sum: each point's values of every point weighted by exp(-|f_i - f_j|^2 / 2)."""
    kernel = torch.exp(-0.5 * torch.cdist(features.double(), features.double()).square())
    return kernel @ values.double()


def _scene(seed: int = 0, grid: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours (1, 3, R, R) of two flat regions with noise, and a smooth two-class score map (1, 2, R, R) that
    does not follow the regions' edge."""
    rng = np.random.default_rng(seed)
    colours = np.zeros((3, grid, grid), dtype=np.float32)
    colours[:, :, : grid // 2] = np.array([200, 60, 40]).reshape(3, 1, 1)
    colours[:, :, grid // 2 :] = np.array([40, 90, 210]).reshape(3, 1, 1)
    colours += rng.normal(0, 3, colours.shape).astype(np.float32)
    x = np.linspace(0, 1, grid, dtype=np.float32)
    left = np.clip(1.5 - 1.4 * x, 0, 1)[None, :].repeat(grid, 0)  # fades out past the middle, not at it
    return torch.from_numpy(colours)[None], torch.from_numpy(np.stack([left, 1 - left]))[None]


@pytest.mark.parametrize("d, spread", [(2, 3.0), (5, 1.0)])
def test_the_lattice_filters_as_the_gaussian_sum_does(d: int, spread: float) -> None:
    generator = torch.Generator().manual_seed(d)
    features = torch.randn(400, d, generator=generator) * spread
    values = torch.rand(400, 3, generator=generator)
    group = torch.zeros(400, dtype=torch.long)
    approximate = Lattice(features, group).filter(values).double()
    exact = _exact_filter(features, values)
    # A permutohedral lattice blurs with a coarse approximation of the Gaussian, scaled (more so in more
    # dimensions); what the CRF needs, normalising each kernel, is the same relative weights. Its exactness is
    # the reference's: the mean field below matches pydensecrf's, which filters the same way.
    correlation = np.corrcoef(approximate.flatten().numpy(), exact.flatten().numpy())[0, 1]
    assert correlation > 0.99
    ratio = (approximate / exact).flatten()
    assert float(ratio.std() / ratio.mean()) < 0.2


def test_groups_never_share_a_vertex() -> None:
    features = torch.zeros(6, 3)  # every point at the same place
    group = torch.tensor([0, 0, 0, 1, 1, 2])
    out = Lattice(features, group).filter(torch.ones(6, 1))
    # The sum over the point's own group only: 3, 3, 3, 2, 2, 1 (up to the lattice's scale, the same for all).
    assert torch.allclose(out / out[5], torch.tensor([[3.0], [3.0], [3.0], [2.0], [2.0], [1.0]]), rtol=1e-4)


def test_mean_field_matches_the_reference_implementation() -> None:
    """pydensecrf's DenseCRF with the same appearance features, Potts weight and symmetric normalisation."""
    import pydensecrf.densecrf as dcrf

    colours, scores = _scene()
    grid = colours.shape[-1]
    probabilities = torch.cat([torch.full((1, 1, grid, grid), 0.4), scores], dim=1) + 1e-5
    probabilities = probabilities / probabilities.sum(dim=1, keepdim=True)
    settings = CrfSettings(iterations=5, appearance_sigma=6.0, colour_sigma=8.0, smoothness_weight=0.0)
    aspect = torch.tensor([[grid, grid]])
    ours = dense_crf(probabilities, colours, aspect, torch.ones(1, 3, dtype=torch.bool), settings)[0]

    ys, xs = np.mgrid[0:grid, 0:grid].astype(np.float32) + 0.5
    features = np.stack(
        [xs / settings.appearance_sigma, ys / settings.appearance_sigma, *(colours[0].numpy() / settings.colour_sigma)]
    ).reshape(5, -1)
    reference = dcrf.DenseCRF(grid * grid, 3)
    reference.setUnaryEnergy(np.ascontiguousarray(-np.log(probabilities[0].numpy()).reshape(3, -1)))
    reference.addPairwiseEnergy(np.ascontiguousarray(features), compat=settings.appearance_weight)
    expected = np.asarray(reference.inference(settings.iterations)).reshape(3, grid, grid)
    assert np.abs(ours.numpy() - expected).max() < 1e-3
    assert torch.equal(ours.argmax(dim=0), torch.from_numpy(expected.argmax(axis=0)))


def test_the_crf_follows_the_colour_edge_and_keeps_the_rule_without_pairwise_terms() -> None:
    colours, scores = _scene(seed=1)
    grid = colours.shape[-1]
    valid = torch.ones(1, 2, dtype=torch.bool)
    aspect = torch.tensor([[grid, grid]])
    plain = label_maps(scores, valid, 0.05)[0]
    assert (plain[:, grid // 2 : grid // 2 + 2] == 1).all()  # the rule spills the left class past the edge
    refined = crf_label_maps(scores, valid, 0.05, colours, aspect, CrfSettings(appearance_weight=6.0))[0]
    assert (refined[:, : grid // 2] == 1).all() and (refined[:, grid // 2 :] == 2).all()
    silent = CrfSettings(appearance_weight=0.0, smoothness_weight=0.0)
    assert torch.equal(crf_label_maps(scores, valid, 0.3, colours, aspect, silent), label_maps(scores, valid, 0.3))


def test_padding_slots_never_win_and_the_band_is_the_rules() -> None:
    colours, scores = _scene(seed=2)
    grid = colours.shape[-1]
    padded = torch.cat([scores, torch.ones(1, 1, grid, grid)], dim=1)  # a third slot, padding, high everywhere
    valid = torch.tensor([[True, True, False]])
    out = crf_label_maps(padded, valid, 0.2, colours, torch.tensor([[grid, grid]]), CrfSettings(), ignore_below=0.5)
    assert 3 not in out.unique().tolist()
    band = (scores.amax(dim=1) >= 0.2) & (scores.amax(dim=1) < 0.5)
    assert torch.equal(out == 255, band)
    marginals = dense_crf(
        torch.softmax(torch.randn(1, 3, grid, grid), dim=1), colours, torch.tensor([[grid, grid]]), valid, CrfSettings()
    )
    assert torch.allclose(marginals.sum(dim=1), torch.ones(1, grid, grid)) and float(marginals[:, 2].max()) == 0.0


def test_slots_no_image_fills_are_left_out_and_the_labels_keep_their_slots() -> None:
    """The CRF runs on the slots some image of the batch fills; its labels are those of the CRF over every slot."""
    (first, scores), (second, other) = _scene(seed=3), _scene(seed=4)
    grid = first.shape[-1]
    colours = torch.cat([first, second])
    aspect = torch.tensor([[grid, grid], [grid, grid]])
    noise = torch.rand(2, 4, grid, grid, generator=torch.Generator().manual_seed(0))
    maps = noise.clone()  # the slots an image does not fill hold scores that would win were they counted
    maps[0, 0], maps[0, 3] = scores[0, 0], scores[0, 1]
    maps[1, 3] = other[0, 1]
    valid = torch.tensor([[True, False, False, True], [False, False, False, True]])  # slots 1 and 2 filled by none
    settings = CrfSettings()
    out = crf_label_maps(maps, valid, 0.2, colours, aspect, settings, upsample=2)

    probabilities = torch.cat([torch.full((2, 1, grid, grid), 0.2), maps * valid.view(2, 4, 1, 1)], dim=1) + 1e-5
    probabilities = probabilities / probabilities.sum(dim=1, keepdim=True)
    allowed = torch.cat([torch.ones(2, 1, dtype=torch.bool), valid], dim=1)
    every_slot = dense_crf(probabilities, colours, aspect, allowed, settings)
    expected = torch.nn.functional.interpolate(every_slot, scale_factor=2, mode="bilinear").argmax(dim=1)
    assert torch.equal(out.long(), expected)
    assert set(out[0].unique().tolist()) == {1, 4} and set(out[1].unique().tolist()) <= {0, 4}
    nothing_kept = torch.zeros(2, 4, dtype=torch.bool)
    assert torch.equal(crf_label_maps(maps, nothing_kept, 0.2, colours, aspect, settings, upsample=2), out * 0)


def test_cell_colours_are_area_means_of_the_image_region_and_own_background_its_mean_peak() -> None:
    pixels = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    pixels[0, :4, :4] = 100  # the image is the top 8 x 4 pixels: its left half 100, its right half 0
    pixels[0, :4, 0] = 180  # a cell's mean takes every pixel of it, not one sample
    colours = cell_colours(pixels, torch.tensor([[8, 4]]), 2)
    assert colours.shape == (1, 3, 2, 2)
    assert (
        torch.allclose(colours[0, :, :, 0], torch.full((3, 2), 120.0)) and float(colours[0, :, :, 1].abs().max()) == 0
    )
    maps = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]], [[0.0, 0.5], [1.0, 0.0]]]])
    level = own_background(maps, torch.tensor([[True, True]]))
    assert torch.allclose(level, torch.tensor([(1.0 + 0.5 + 1.0 + 0.5) / 4]))
    assert float(own_background(maps, torch.tensor([[True, False]]))) == pytest.approx(0.5)
