"""The model families the transformer and timm tests run, and weights files shaped as the published ones.

No model hub is reachable here, so weights are the architecture's own random initialisation, saved the way the
hubs publish them (timm: a safetensors file of the bare model's state dict; torchvision: a `.pth` state dict).
Weights a family initialises to zero (torchvision's ViT head) are redrawn: a zero head gives every class the
same score and no map any evidence.
"""

from __future__ import annotations

from pathlib import Path

import torch

# (family, `model.name`, `model.input_size` or None for the native size): the smallest member of each family, at
# a small input where the architecture allows one.
TIMM_FAMILIES: tuple[tuple[str, str, int | None], ...] = (
    ("ResNet", "timm:resnet10t", 64),
    ("EfficientNet", "timm:efficientnet_b0", 64),
    ("ConvNeXt", "timm:convnext_atto", 64),
    ("RegNet", "timm:regnetx_002", 64),
    ("MobileNetV3", "timm:mobilenetv3_small_050", 64),
    ("ViT", "timm:vit_tiny_patch16_224", 64),
    ("DeiT", "timm:deit_tiny_distilled_patch16_224", 64),
    ("Swin", "timm:swin_tiny_patch4_window7_224", 64),
    ("MaxViT", "timm:maxvit_pico_rw_256", 64),
    ("EVA", "timm:eva02_tiny_patch14_336.mim_in22k_ft_in1k", 56),
    ("EfficientViT", "timm:efficientvit_b0", 64),
    ("ResNet-ViT hybrid", "timm:vit_tiny_r_s16_p8_224", 96),
)

TORCHVISION_TRANSFORMERS: tuple[tuple[str, str, int | None], ...] = (
    ("ViT", "vit_b_32", None),  # position embeddings fix the input at 224
    ("Swin", "swin_t", 64),
    ("Swin V2", "swin_v2_t", 64),
    ("MaxViT", "maxvit_t", None),  # its window partitions need 224
)


def published_shaped_state(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """`module`'s state dict with all-zero weight matrices redrawn (small normal values), everything else kept."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if value.is_floating_point() and value.dim() >= 2 and not value.any():
            value = torch.randn(value.shape, generator=generator) * 0.05
        state[key] = value.contiguous()
    return state


def save_weights(name: str, folder: Path, input_size: int | None = None) -> Path:
    """Random weights for registry or `timm:` name `name`, saved as its zoo publishes them; returns the file."""
    from camray.models import get_spec

    # The architecture's own initialisation draws from the global generator: seeded here, a family's weights are
    # the same whichever tests ran before (some draws give a random head whose every map is flat).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = get_spec(name, input_size=input_size).build()
    if name.startswith("timm:"):
        from safetensors.torch import save_file

        path = folder / f"{name.removeprefix('timm:').replace('.', '_')}.safetensors"
        save_file(published_shaped_state(module.model), str(path))
    else:
        path = folder / f"{name}.pth"
        torch.save(published_shaped_state(module), path)
    return path
