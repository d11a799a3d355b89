"""Batch-norm folding for inference: a convolution followed by batch norm becomes one convolution.

In eval mode batch norm is a per-channel affine map, so it folds exactly into the convolution before it
(`torch.nn.utils.fusion.fuse_conv_bn_eval`). Unfolded, each one is a separate pass over an activation that does
not fit in cache: a quarter of EfficientNet-Lite0's CPU forward time in the job, where two actors share the
memory bus (py-spy). The fold is applied where the pairing is certain from the structure alone:
- consecutive `Conv2d`, `BatchNorm2d` children of an `nn.Sequential` (torchvision's `Conv2dNormActivation`,
  hence MobileNet, EfficientNet, MNASNet, RegNet, ShuffleNet; VGG-BN; EfficientNet-Lite; DenseNet's stem);
- the attribute pairs of torchvision blocks whose `forward` applies them back to back (`_TORCHVISION_BLOCK_PAIRS`).
DenseNet's layers normalise before their convolution (pre-activation), which has no convolution to fold into;
they stay as they are. A folded batch norm is replaced by `nn.Identity`, so its module path still resolves and
a hook on it still sees the normalised output.
"""

from __future__ import annotations

import sys
from collections.abc import Collection

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# torchvision modules and block classes -> (conv attribute, batch-norm attribute) pairs that their `forward`
# applies back to back. Matched by exact type, not by name: a user's pre-activation "Bottleneck" normalises
# before it convolves.
_TORCHVISION_BLOCK_PAIRS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "torchvision.models.resnet": {
        "ResNet": (("conv1", "bn1"),),
        "BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
        "Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    },
    "torchvision.models.googlenet": {"BasicConv2d": (("conv", "bn"),)},
    "torchvision.models.inception": {"BasicConv2d": (("conv", "bn"),)},
}


def _block_pairs() -> dict[type[nn.Module], tuple[tuple[str, str], ...]]:
    """The block classes of `_TORCHVISION_BLOCK_PAIRS` whose modules are loaded: a model holding one has imported
    it, and importing torchvision only to compare types would cost an EfficientNet-Lite actor 2.5 s."""
    pairs: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {}
    for module_name, blocks in _TORCHVISION_BLOCK_PAIRS.items():
        module = sys.modules.get(module_name)
        if module is not None:
            pairs.update({getattr(module, name): attributes for name, attributes in blocks.items()})
    return pairs


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and type(bn) is nn.BatchNorm2d
        and bn.running_mean is not None  # without running statistics, eval mode still normalises per batch
        and conv.out_channels == bn.num_features
    )


def fold_batch_norms(module: nn.Module, keep: Collection[str] = ()) -> int:
    """Folds every certain conv -> batch-norm pair of `module` (in eval mode) in place; returns how many.

    `keep`: module paths whose own output must stay what it was (hooked layers): a convolution named there
    keeps its batch norm separate, since folding would change that convolution's output.
    """
    if module.training:
        raise ValueError("batch norms fold only in eval mode: call `module.eval()` first")
    folded = 0
    block_pairs = _block_pairs()
    for path, parent in list(module.named_modules()):
        prefix = f"{path}." if path else ""
        if isinstance(parent, nn.Sequential):
            names = [name for name, _ in parent.named_children()]
            pairs = list(zip(names, names[1:], strict=False))
        else:
            pairs = list(block_pairs.get(type(parent), ()))
        for conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if not _foldable(conv, bn) or f"{prefix}{conv_name}" in keep:
                continue
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded
