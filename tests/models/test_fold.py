"""Batch-norm folding and the Lite models' "SAME" convolutions: same outputs, fewer passes."""

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from camray.cam.methods import MapExtractor
from camray.config import ModelConfig
from camray.models import resolve_setup
from camray.models.efficientnet_lite import SamePadConv2d
from camray.models.fold import fold_batch_norms


def _batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _with_trained_statistics(module: nn.Module) -> nn.Module:
    """Fresh torchvision models have identity batch norms (mean 0, var 1, weight 1, bias 0), which fold into
    nothing; give them statistics such as training leaves, so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            n = layer.num_features
            layer.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            layer.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            layer.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return module.eval()


def test_lite0_folds_every_batch_norm_and_keeps_its_logits_and_maps(photos):
    from camray.bench.throughput import _batch

    loaded = resolve_setup(ModelConfig(name="efficientnet_lite0"))
    reference = copy.deepcopy(loaded.module)
    before = _batch_norms(loaded.module)
    assert fold_batch_norms(loaded.module, keep=[loaded.spec.target_layer]) == before == 49
    assert _batch_norms(loaded.module) == 0
    pixels, _ = _batch(224, 6)
    x = (pixels.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    folded_logits, folded_maps, folded_ids = MapExtractor(loaded.module, loaded.spec, "cam")(x, 5)
    logits, maps, ids = MapExtractor(reference, loaded.spec, "cam")(x, 5)
    torch.testing.assert_close(folded_logits, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(folded_maps, maps, atol=1e-4, rtol=1e-4)
    assert torch.equal(folded_ids, ids)
    # Gradients flow through folded convolutions as through the originals.
    folded_grad = MapExtractor(loaded.module, loaded.spec, "gradcam")(x, 2)[1]
    grad = MapExtractor(reference, loaded.spec, "gradcam")(x, 2)[1]
    torch.testing.assert_close(folded_grad, grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("name", "left"),
    [
        ("resnet18", 0),  # block attribute pairs and the downsample Sequential
        ("googlenet", 0),  # BasicConv2d
        ("mobilenet_v3_small", 0),  # Conv2dNormActivation
        ("shufflenet_v2_x0_5", 0),
        ("densenet121", 120),  # pre-activation: only the stem's conv0 -> norm0 folds
    ],
)
def test_torchvision_families_fold_where_the_pairing_is_certain(name, left):
    extra = {"init_weights": False, "aux_logits": False} if name == "googlenet" else {}
    module = _with_trained_statistics(torchvision.models.get_model(name, weights=None, **extra))
    reference = copy.deepcopy(module)
    folded = fold_batch_norms(module)
    assert folded > 0 and _batch_norms(module) == left
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(module(x), reference(x), atol=1e-4, rtol=1e-4)


def test_a_kept_convolution_keeps_its_own_output():
    module = _with_trained_statistics(torchvision.models.resnet18(weights=None))
    seen: dict[str, torch.Tensor] = {}
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        handle = module.layer1[0].conv1.register_forward_hook(lambda m, i, o: seen.setdefault("before", o))
        module(x)
        handle.remove()
        fold_batch_norms(module, keep=["layer1.0.conv1"])
        assert isinstance(module.layer1[0].bn1, nn.BatchNorm2d) and isinstance(module.layer1[0].bn2, nn.Identity)
        module.layer1[0].conv1.register_forward_hook(lambda m, i, o: seen.setdefault("after", o))
        module(x)
    torch.testing.assert_close(seen["after"], seen["before"])


def test_a_look_alike_block_that_normalises_first_is_left_alone():
    """A user's pre-activation block with torchvision's attribute names: bn1 feeds conv1, not the reverse."""

    class Bottleneck(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn1 = nn.BatchNorm2d(8)
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv1(torch.relu(self.bn1(x)))

    module = _with_trained_statistics(nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), Bottleneck()))
    reference = copy.deepcopy(module)
    assert fold_batch_norms(module) == 0 and _batch_norms(module) == 1
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), reference(x))


def test_folding_a_training_model_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(torchvision.models.resnet18(weights=None).train())


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [(224, 224), (15, 15), (33, 20), (112, 57)])
def test_same_padding_without_padding_the_input_matches_tensorflows(kernel, size):
    """Even sizes need (0, 1) or (1, 2) padding, odd ones symmetric padding: both against an explicit pad."""
    torch.manual_seed(0)
    conv = SamePadConv2d(8, 8, kernel, 2, 0, groups=8, bias=False)
    x = torch.randn(2, 8, *size, requires_grad=True)
    expected_input = x.detach().clone().requires_grad_(True)
    pads = [SamePadConv2d._same(s, kernel, 2) for s in size]
    expected = F.conv2d(F.pad(expected_input, [*pads[1], *pads[0]]), conv.weight, None, 2, 0, 1, conv.groups)
    out = conv(x)
    assert out.shape == expected.shape == (2, 8, -(-size[0] // 2), -(-size[1] // 2))
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, expected_input.grad)
