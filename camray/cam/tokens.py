"""Token grids: a transformer layer's output laid out as the `(..., C, h, w)` feature map CAM methods read.

A layer's output comes in one of three layouts, stated by the model's spec:

- ``nchw``: `(..., C, h, w)`, a convolutional feature map (CNNs, MaxViT); passed through.
- ``nhwc``: `(..., h, w, C)`, patch tokens already on their grid (Swin's stages, timm's Swin and ConvNeXt-style
  channels-last stages).
- ``tokens``: `(..., P + h * w, C)`, a sequence of `P` prefix tokens (class, distillation, register tokens) and
  the patch tokens in row-major order (ViT, DeiT, BEiT, EVA). The grid is square: camray feeds square canvases.

Leading dimensions are kept, so a batch of gradients `(K, B, ...)` reshapes like the activations `(B, ...)`.
"""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor

Layout = Literal["nchw", "nhwc", "tokens"]
LAYOUTS: tuple[Layout, ...] = ("nchw", "nhwc", "tokens")


def to_grid(output: Tensor, layout: Layout, prefix_tokens: int = 0) -> Tensor:
    """A layer's output as a feature map.

    Args:
        output (Tensor[..., C, h, w] | Tensor[..., h, w, C] | Tensor[..., P + h * w, C]): per `layout`.
        layout: ``nchw``, ``nhwc`` or ``tokens``.
        prefix_tokens: `P`, the tokens before the patch tokens (``tokens`` only).

    Returns:
        Tensor[..., C, h, w]: a view where the layout allows one.
    """
    if layout == "nchw":
        return output
    if layout == "nhwc":
        if output.dim() < 3:
            raise ValueError(f"an `nhwc` output must be (..., h, w, C), got {tuple(output.shape)}")
        return output.movedim(-1, -3)
    if layout != "tokens":
        raise ValueError(f"`layout` must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if output.dim() < 2:
        raise ValueError(f"a `tokens` output must be (..., tokens, C), got {tuple(output.shape)}")
    patches = output[..., prefix_tokens:, :]
    side = math.isqrt(patches.shape[-2])
    if side * side != patches.shape[-2] or side == 0:
        raise ValueError(
            f"{patches.shape[-2]} patch tokens (after {prefix_tokens} prefix tokens) do not form a square grid"
        )
    return patches.unflatten(-2, (side, side)).movedim(-1, -3)
