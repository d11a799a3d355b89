"""Our raw maps against TorchCAM and pytorch-grad-cam on the same model, weights and input.

Random-init weights stand in where no pretrained file is available offline: the maths does not depend on
training. Documented differences, accounted for here:
- TorchCAM's CAM applies no ReLU and hooks the target layer's output; DenseNet applies a functional ReLU
  after `features`, which our CAM includes (it is what the pooling sees), so TorchCAM gets an explicit ReLU
  appended to `features` for that comparison.
- DenseNet's in-place ReLU after `features` aliases the hooked tensor: both peers end up weighing the
  post-ReLU activations, as we do on purpose; TorchCAM's Grad-CAM however takes its gradient after that
  ReLU (unmasked), pytorch-grad-cam before it (zero where it clips), as we do. There we compare Grad-CAM
  with pytorch-grad-cam only.
- Both peers min-max normalise and pytorch-grad-cam resizes; we compare unnormalised maps at feature
  resolution (TorchCAM `normalized=False`; pytorch-grad-cam's `get_cam_image` plus its ReLU).
- TorchCAM's Grad-CAM++ divides alpha in place on a boolean-indexed copy, so its alpha is never normalised;
  we follow the paper's eq. 19, as pytorch-grad-cam does, and compare Grad-CAM++ with pytorch-grad-cam.
- pytorch-grad-cam adds 1e-6 to Grad-CAM++'s alpha denominator, which is not negligible next to the tiny
  squared gradients of a random-init network; for that comparison the logits are scaled by 1e5 (same model
  for both sides), which leaves every map's shape unchanged and makes the epsilon immaterial.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camray.cam.methods import MapExtractor
from camray.models import get_spec, resolve_layer

# One member of every family (the smallest, to keep CPU time low); the registry handles the rest by rule.
FAMILIES = [
    "resnet18",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "densenet121",
    "googlenet",
    "inception_v3",
    "vgg11_bn",
    "alexnet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "mnasnet0_5",
    "regnet_x_400mf",
    "convnext_tiny",
    "efficientnet_lite0",
]
TOP_K = 2


def _model(name: str) -> tuple[nn.Module, object, torch.Tensor]:
    torch.manual_seed(0)
    spec = get_spec(name)
    module = spec.build().eval()
    if spec.finalize is not None:
        spec.finalize(module)
    size = 128 if name != "inception_v3" else 160
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return module, spec, x


def _ours(module, spec, method, x):
    _, maps, class_ids = MapExtractor(module, spec, method)(x, TOP_K)
    return maps.double(), class_ids


def _torchcam(module, spec, method, x, class_ids):
    from torchcam import methods as tc

    module = copy.deepcopy(module)
    target = spec.target_layer
    if method == "cam" and spec.feature_relu:
        resolve_layer(module, target, "target").add_module("camray_relu", nn.ReLU())
    extractor_cls = {"cam": tc.CAM, "gradcam": tc.GradCAM, "xgradcam": tc.XGradCAM, "layercam": tc.LayerCAM}[method]
    kwargs = {"fc_layer": spec.classifier_layer} if method == "cam" else {}
    maps = []
    with extractor_cls(module, target_layer=target, input_shape=tuple(x.shape[1:]), **kwargs) as extractor:
        for k in range(TOP_K):
            scores = module(x)
            (cam,) = extractor(class_idx=class_ids[:, k].tolist(), scores=scores, normalized=False)
            maps.append(cam.detach().double())
    return torch.stack(maps, dim=1)


def _grad_cam_library(module, spec, method, x, class_ids):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = copy.deepcopy(module)
    layer = resolve_layer(module, spec.target_layer, "target")
    cam_cls = {"gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "hirescam": HiResCAM}[method]
    maps = []
    with cam_cls(model=module, target_layers=[layer]) as cam:
        for k in range(TOP_K):
            targets = [ClassifierOutputTarget(int(c)) for c in class_ids[:, k]]
            outputs = cam.activations_and_grads(x)
            module.zero_grad()
            sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward(retain_graph=True)
            acts = cam.activations_and_grads.activations[0].cpu().numpy()
            grads = cam.activations_and_grads.gradients[0].cpu().numpy()
            raw = cam.get_cam_image(x, layer, targets, acts, grads, False)
            maps.append(torch.from_numpy(np.maximum(raw, 0)).double())
    return torch.stack(maps, dim=1)


class _Scaled(nn.Module):
    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


def _with_scaled_logits(module: nn.Module, spec, factor: float):
    layers = {"target_layer": f"inner.{spec.target_layer}"}
    if spec.classifier_layer:
        layers["classifier_layer"] = f"inner.{spec.classifier_layer}"
    return _Scaled(module, factor).eval(), dataclasses.replace(spec, **layers)


def _assert_maps_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    torch.testing.assert_close(ours / scale, theirs / scale, atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_maps_equal_the_peers(name):
    module, spec, x = _model(name)
    methods = ["gradcam", "xgradcam", "layercam", "gradcampp", "hirescam"]
    if spec.classifier_layer is not None:
        methods.insert(0, "cam")
    for method in methods:
        if method == "gradcampp":
            module, spec = _with_scaled_logits(module, spec, 1e5)
        ours, class_ids = _ours(module, spec, method, x)
        assert ours.shape[:2] == (2, TOP_K)
        torchcam_differs = method == "gradcam" and spec.feature_relu
        if method in ("cam", "gradcam", "xgradcam", "layercam") and not torchcam_differs:
            _assert_maps_close(ours, _torchcam(module, spec, method, x, class_ids))
        if method in ("gradcam", "gradcampp", "hirescam"):
            _assert_maps_close(ours, _grad_cam_library(module, spec, method, x, class_ids))


def test_cam_is_refused_without_a_linear_ending():
    module, spec, _ = _model("vgg11_bn")
    with pytest.raises(ValueError, match="`cam.method` is `cam`.*use a gradient method"):
        MapExtractor(module, spec, "cam")


def test_extractor_leaves_the_callers_model_as_it_was():
    module, spec, x = _model("resnet18")
    module.train()
    requires = [p.requires_grad for p in module.parameters()]
    MapExtractor(module, spec, "gradcam")(x, 1)
    assert module.training and [p.requires_grad for p in module.parameters()] == requires
    assert all(not layer._forward_hooks for layer in module.modules())
    assert all(p.grad is None for p in module.parameters())


def test_gradcam_on_cam_network_agrees_in_shape_with_cam():
    """On a GAP + linear network Grad-CAM's weights are CAM's weights / (h*w); the maps agree after ReLU."""
    module, spec, x = _model("resnet18")
    cam, ids_cam = _ours(module, spec, "cam", x)
    grad, ids_grad = _ours(module, spec, "gradcam", x)
    assert torch.equal(ids_cam, ids_grad)
    h, w = cam.shape[-2:]
    torch.testing.assert_close(grad, F.relu(cam) / (h * w), atol=1e-5, rtol=1e-4)


def test_scorecam_equals_torchcam():
    from torchcam.methods import ScoreCAM

    torch.manual_seed(0)
    # layer3: a 4x4 map at this input where layer4's is 2x2, and half the channels, each one forward pass a class.
    spec = get_spec("resnet18", target_layer="layer3")
    module = spec.build().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ours, class_ids = _ours(module, spec, "scorecam", x)
    assert ours.shape[-2:] == (4, 4)
    expected = []
    with ScoreCAM(copy.deepcopy(module), target_layer="layer3", batch_size=64, input_shape=(3, 64, 64)) as extractor:
        for k in range(TOP_K):
            scores = extractor.model(x)
            (cam,) = extractor(class_idx=class_ids[:, k].tolist(), scores=scores, normalized=False)
            expected.append(cam.double())
    _assert_maps_close(ours, torch.stack(expected, dim=1))


@pytest.mark.parametrize("method", ["cam", "gradcam", "scorecam"])
def test_extract_captures_other_layers_from_the_batchs_own_pass(method):
    """`extract` hands back the asked layers' outputs from the clean forward (not Score-CAM's masked ones),
    detached, with the same maps as a plain call, and leaves no hook behind."""
    spec = get_spec("resnet18")
    torch.manual_seed(0)
    module = spec.build().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # layer4: 2 x 2 maps, cheap for Score-CAM
    with torch.inference_mode():
        expected = module.layer2(module.layer1(module.maxpool(module.relu(module.bn1(module.conv1(x))))))
    extractor = MapExtractor(module, spec, method)
    out = extractor.extract(x, TOP_K, layers=(module.layer2, module.layer1))
    assert len(out.layers) == 2 and not out.layers[0].requires_grad
    torch.testing.assert_close(out.layers[0], expected, atol=1e-5, rtol=1e-5)
    assert out.layers[1].shape[1] == 64  # layer1's channels: the order asked for
    _, maps, class_ids = extractor(x, TOP_K)
    assert torch.equal(out.class_ids, class_ids)
    torch.testing.assert_close(out.maps, maps)
    assert all(not layer._forward_hooks for layer in module.modules())


def test_extract_refuses_a_layer_the_forward_never_runs():
    module, spec, x = _model("resnet18")
    stray = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="did not run"):
        MapExtractor(module, spec, "cam").extract(x, 1, layers=(stray,))
    assert not stray._forward_hooks and all(not layer._forward_hooks for layer in module.modules())


def test_a_compiled_extractor_gives_the_eager_maps_and_layers():
    """`torch.compile` traces the hooks present at its first call and ignores later ones: a compiled extractor
    holds its hooks from the start, so its maps and captured layers are the eager ones, a plain forward pass
    (a benchmark's forward-only timing) before the first `extract` included, and `close` leaves the model bare."""
    module, spec, x = _model("resnet18")
    block = resolve_layer(module, "layer3", "cam.refine_layer")
    eager = MapExtractor(module, spec, "cam").extract(x, TOP_K, layers=(block,))
    compiled = MapExtractor(module, spec, "cam", compile_model=True, capture=(block,))
    assert compiled.compiled
    with torch.inference_mode():
        compiled.forward(x)
    for _ in range(2):  # the second call runs the cached graph
        out = compiled.extract(x, TOP_K, layers=(block,))
        torch.testing.assert_close(out.maps, eager.maps, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.layers[0], eager.layers[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(out.class_ids, eager.class_ids)
    with pytest.raises(ValueError, match="capture"):
        compiled.extract(x, TOP_K, layers=(module.layer2,))
    compiled.close()
    assert not compiled.compiled and not _forward_hooks(module)


def _forward_hooks(module: nn.Module) -> list[object]:
    return [hook for sub in module.modules() for hook in sub._forward_hooks.values()]
