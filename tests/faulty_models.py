"""Real EfficientNet-Lite0 networks that fail the way production models do, for `module:factory` configs.

- `poisoned_lite0`: raises for the whole batch when any image in it carries a magenta patch in its top-left
  corner (as one unreadable-in-practice image breaks a batch of a real model).
- `memory_bound_lite0`: raises `torch.cuda.OutOfMemoryError` for batches above `BATCH_LIMIT` images, as a GPU
  would for a batch too large for its memory.
- `broken_rows_lite0`: a sound network whose loading breaks camray's row builder in the process that loads it (a
  job's driver, which builds no rows, and each predictor actor): a stand-in for a bug in camray's own code past
  the model. Each call of the broken builder is numbered in its message.
"""

from __future__ import annotations

import itertools
import os

import torch
from torch import Tensor

from camray.models.efficientnet_lite import EfficientNetLite, efficientnet_lite

BATCH_LIMIT = 3
# The magenta patch (255, 0, 255) after ImageNet normalisation, which custom models get.
_MAGENTA = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225])


def has_poison_patch(x: Tensor) -> Tensor:
    """x (Tensor[B, 3, H, W]) -> Tensor[B] bool: the top-left 8x8 pixels are magenta."""
    corner = x[:, :, :8, :8].float().mean(dim=(2, 3))
    return (corner - _MAGENTA.to(x.device)).abs().amax(dim=1) < 0.05


class _Poisoned(EfficientNetLite):
    def forward(self, x: Tensor) -> Tensor:
        if has_poison_patch(x).any():
            raise RuntimeError("the model cannot digest this input")
        return super().forward(x)


class _MemoryBound(EfficientNetLite):
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > BATCH_LIMIT:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {x.shape[0]}")
        return super().forward(x)


def _build(cls: type[EfficientNetLite]) -> torch.nn.Module:
    model = efficientnet_lite("efficientnet_lite0")
    model.__class__ = cls  # the same modules and weights layout, another forward
    return model


def poisoned_lite0() -> torch.nn.Module:
    return _build(_Poisoned)


def memory_bound_lite0() -> torch.nn.Module:
    return _build(_MemoryBound)


def broken_rows_lite0() -> torch.nn.Module:
    import camray.predictor

    calls = itertools.count(1)

    def broken_result_table(*_: object, **__: object) -> None:
        raise RuntimeError(f"deliberately broken row builder: call {next(calls)} in process {os.getpid()}")

    camray.predictor.result_table = broken_result_table
    return efficientnet_lite("efficientnet_lite0")
