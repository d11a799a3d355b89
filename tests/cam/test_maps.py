import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from camray.cam.maps import class_activation_maps, normalize_maps, resample_regions
from camray.cam.methods import MapExtractor
from camray.image.decode import decode_image
from camray.predictor import Annotator


def test_cam_matches_a_loop_over_channels():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 16, 5, 6, generator=generator, dtype=torch.float64)
    weights = torch.randn(3, 4, 16, generator=generator, dtype=torch.float64)
    maps = class_activation_maps(features, weights)
    for b in range(3):
        for k in range(4):
            expected = sum(weights[b, k, c] * features[b, c] for c in range(16))
            torch.testing.assert_close(maps[b, k], expected)


def test_cam_mean_plus_bias_is_the_logit(photos, lite0):
    """The defining property of CAM on a GAP + linear network, checked on the real model and photo."""
    decoded = decode_image(photos["chelsea.png"], 224, "letterbox")
    x = Annotator(lite0, *_configs(), torch.device("cpu")).prepare(
        torch.from_numpy(decoded.pixels)[None], torch.tensor([[decoded.valid_width, decoded.valid_height]])
    )
    extractor = MapExtractor(lite0.module, lite0.spec, "cam")
    logits, maps, class_ids = extractor(x, top_k=5)
    with torch.no_grad():
        bias = lite0.module.classifier[1].bias[class_ids]
    torch.testing.assert_close(maps.mean(dim=(-2, -1)) + bias, logits.gather(1, class_ids), atol=1e-4, rtol=1e-4)
    assert maps.shape == (1, 5, 7, 7)


def test_normalize_maps_range_and_validity():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 100.0]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    out = normalize_maps(maps, valid)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.5], [1.0, 0.0]]]))
    plain = normalize_maps(maps)
    assert plain.min() == 0 and plain.max() == 1
    flat = normalize_maps(torch.full((1, 3, 3), 7.0))
    assert torch.equal(flat, torch.zeros(1, 3, 3))
    nearly_flat = normalize_maps(torch.tensor([[[0.0, 1e-10], [0.0, 0.0]]]))
    assert torch.equal(nearly_flat, torch.zeros(1, 2, 2))


def test_hooks_are_removed_and_mode_restored_even_when_a_batch_raises(lite0):
    extractor = MapExtractor(lite0.module, lite0.spec, "gradcam")
    second = MapExtractor(lite0.module, lite0.spec, "cam")
    lite0.module.train()
    try:
        try:
            extractor(torch.zeros(1, 5, 64, 64), top_k=1)  # wrong channel count: the forward raises
        except RuntimeError:
            pass
        assert not extractor.target._forward_hooks
        assert lite0.module.training
        lite0.module.eval()
        x = torch.randn(2, 3, 96, 96)
        _, maps_a, _ = second(x, 2)
        _, maps_b, _ = second(x, 2)
        torch.testing.assert_close(maps_a, maps_b)
        assert not second.target._forward_hooks
    finally:
        lite0.module.eval()


def test_batched_gradients_equal_one_backward_per_class(lite0):
    """One backward with batched cotangents gives each class's own gradient."""
    extractor = MapExtractor(lite0.module, lite0.spec, "gradcam")
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    _, maps, class_ids = extractor(x, top_k=3)
    captured = {}
    handle = extractor.target.register_forward_hook(
        lambda m, i, o: captured.setdefault("a", o.detach().requires_grad_(True))
    )
    try:
        with torch.enable_grad():
            logits = lite0.module(x)
    finally:
        handle.remove()
    acts = captured["a"]
    for b in range(2):
        for k in range(3):
            (grad,) = torch.autograd.grad(logits[b, class_ids[b, k]], acts, retain_graph=True)
            weights = grad[b].mean(dim=(-2, -1), keepdim=True)
            expected = F.relu((weights * acts[b]).sum(0))
            torch.testing.assert_close(maps[b, k], expected.detach(), atol=1e-5, rtol=1e-4)


def _configs():
    from camray.config import BoxConfig, CamConfig

    return CamConfig(), BoxConfig()


@pytest.mark.parametrize("grid", [56, 17])
def test_region_resampling_takes_roi_aligns_samples(grid):
    """Against torchvision's roi_align (aligned, one sample per bin), including regions past the map's edge
    and regions of less than one cell."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 3, 7, 9, generator=generator)
    extent_wh = torch.tensor([[9.0, 7.0], [4.3, 7.0], [9.0, 2.25], [0.6, 0.4], [11.5, 8.2]])
    boxes = torch.cat([torch.arange(5.0).view(5, 1), torch.zeros(5, 2), extent_wh], dim=1)
    expected = roi_align(maps, boxes, output_size=(grid, grid), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    torch.testing.assert_close(resample_regions(maps, extent_wh, grid), expected, atol=1e-5, rtol=1e-5)
