"""torchvision's transformer families, and the refining block the registry names for each family."""

from __future__ import annotations

import pytest
import torch
from zoo import published_shaped_state

from camray.cam.methods import MapExtractor
from camray.models import get_spec


def _outputs(module: torch.nn.Module, paths: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}
    handles = [
        module.get_submodule(path).register_forward_hook(lambda _m, _i, out, path=path: captured.setdefault(path, out))
        for path in paths
    ]
    try:
        with torch.no_grad():
            module.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("resnet18", 64),
        ("densenet121", 64),
        ("googlenet", 64),
        ("mobilenet_v2", 64),
        ("mobilenet_v3_small", 64),
        ("efficientnet_b0", 64),
        ("shufflenet_v2_x0_5", 64),
        ("mnasnet0_5", 64),
        ("regnet_y_400mf", 64),
        ("swin_t", 64),
        ("maxvit_t", 224),
    ],
)
def test_the_refining_block_is_at_twice_the_target_resolution(name, size):
    """`balanced` refines with the last block at stride 16; the rule holds for each family's layers."""
    spec = get_spec(name)
    module = spec.build()
    out = _outputs(module, [spec.target_layer, spec.refine_layer], torch.randn(1, 3, size, size))
    from camray.cam.tokens import to_grid

    target = to_grid(out[spec.target_layer], spec.layout, spec.prefix_tokens)
    refine = to_grid(out[spec.refine_layer], spec.refine_layout, spec.prefix_tokens)
    assert (refine.shape[-1] + 1) // 2 == target.shape[-1], (refine.shape, target.shape)


def test_vit_has_no_finer_block_and_balanced_keeps_its_maps_plain(tmp_path):
    """A ViT's patch grid is the same in every block: nothing to refine with, so `balanced` (the default) boxes its
    plain maps at `cam.plain_threshold`, as it does the images a model is sure of."""
    from camray.config import load_config
    from camray.models import resolve_setup
    from camray.predictor import Annotator

    spec = get_spec("vit_b_32")
    assert spec.refine_layer is None and spec.default_method == "gradcam" and spec.layout == "tokens"
    module = spec.build()
    weights = tmp_path / "vit.pth"
    torch.save(published_shaped_state(module), weights)
    config = load_config(overrides={"model.name": "vit_b_32", "model.weights": str(weights), "sink.uri": "unused"})
    loaded = resolve_setup(config.model, config.cam, config.tiling)
    annotator = Annotator(loaded, config.cam, config.boxes, torch.device("cpu"))
    pixels = torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = annotator.annotate(pixels, torch.tensor([[224, 224], [224, 150]]))
    assert out.maps.shape == (2, 5, 56, 56) and out.components.boxes.shape[0] >= 2
    assert torch.equal(out.thresholds, torch.full_like(out.thresholds, config.cam.plain_threshold))


def test_swin_cam_is_exact_on_its_token_grid_and_vit_gradients_reach_its_patches():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    swin = get_spec("swin_t")
    module = swin.build().eval()
    logits, maps, class_ids = MapExtractor(module, swin, "cam")(x, 3)
    bias = module.head.bias.detach()
    torch.testing.assert_close(maps.mean((-2, -1)) + bias[class_ids], logits.gather(1, class_ids), atol=1e-4, rtol=0)

    vit = get_spec("vit_b_32")
    module = vit.build()
    module.load_state_dict(published_shaped_state(module))
    _, maps, class_ids = MapExtractor(module.eval(), vit, "gradcam")(torch.randn(2, 3, 224, 224), 3)
    assert maps.shape == (2, 3, 7, 7) and (maps.flatten(2).amax(-1) > 0).all()
