"""A checkpoint's own head: how many classes the weights classify, and the key layouts training code writes.

Fine-tuning replaces a classifier's last layer with one of the user's size, and training code saves the state
dict under its own wrappers: `module.` before every key for DataParallel and DistributedDataParallel, the
attribute that holds the network for a Lightning module (`model.`), `_orig_mod.` for a `torch.compile`d module.
`strip_wrappers` takes those off, as long as the model's own keys do not start with them.

`head_mismatch` compares the weights' tensor shapes with a model built with its default head: the tensors
whose first dimension is the number of classes on both sides (the last layer's weight and bias, an auxiliary
head's) tell the weights' number of classes, and the model is built again with it. Any other difference is a
checkpoint of another architecture (or another member of the family), refused naming the layer and both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def strip_wrappers(state_dict: dict[str, Tensor], expected: Mapping[str, object]) -> dict[str, Tensor]:
    """`state_dict` without the prefixes of `WRAPPER_PREFIXES` that every key carries, taken off one at a time
    (`module.model.` included), but never one that the model's own keys (`expected`) all carry."""
    while state_dict:
        prefix = next(
            (
                prefix
                for prefix in WRAPPER_PREFIXES
                if all(key.startswith(prefix) for key in state_dict)
                and not (expected and all(key.startswith(prefix) for key in expected))
            ),
            None,
        )
        if prefix is None:
            return state_dict
        state_dict = {key.removeprefix(prefix): value for key, value in state_dict.items()}
    return state_dict


@dataclass(frozen=True)
class ShapeMismatch:
    """One tensor whose shape differs between the weights and the model: `key`, and both shapes."""

    key: str
    weights: tuple[int, ...]
    model: tuple[int, ...]

    @property
    def layer(self) -> str:
        return self.key.rsplit(".", 1)[0]


def shape_mismatches(weights: Mapping[str, Tensor], model: Mapping[str, Tensor]) -> list[ShapeMismatch]:
    """The tensors that both hold, with different shapes, in the model's key order."""
    return [
        ShapeMismatch(key, tuple(weights[key].shape), tuple(tensor.shape))
        for key, tensor in model.items()
        if key in weights and tuple(weights[key].shape) != tuple(tensor.shape)
    ]


def classes_in_weights(mismatches: list[ShapeMismatch], model_classes: int) -> int | None:
    """The weights' number of classes where every mismatch is a classifier's size and nothing else: the first
    dimension equals `model_classes` on the model's side, one other number on the weights' side, and the other
    dimensions agree. None otherwise (no mismatch, or one that no head explains)."""
    sizes = set()
    for mismatch in mismatches:
        if (
            not mismatch.model
            or len(mismatch.weights) != len(mismatch.model)
            or mismatch.model[0] != model_classes
            or mismatch.weights[1:] != mismatch.model[1:]
        ):
            return None
        sizes.add(mismatch.weights[0])
    return sizes.pop() if len(sizes) == 1 else None


def describe(mismatch: ShapeMismatch, name: str) -> str:
    return (
        f"layer `{mismatch.layer}` ({mismatch.key}) is {list(mismatch.weights)} in the weights but "
        f"{list(mismatch.model)} in {name}"
    )
