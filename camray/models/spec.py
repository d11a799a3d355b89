"""A model's spec: what camray needs to know of a classifier to explain it (layers, input, labels), and the
ImageNet labels every bundled and zoo model shares. Its own module so that the registry and the timm adapter,
which builds specs, both read it without importing each other."""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from camray.cam.tokens import Layout

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow EfficientNet-Lite release normalises with mean 127 and std 128 on 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class ModelSpec:
    """Everything the predictor needs to know about one architecture.

    `classifier_layer` names a linear layer applied directly to the global average of `target_layer`'s
    output; it is None where the network has no such ending, and then CAM is not available (Grad-CAM is).
    `feature_relu` says a ReLU sits between the target layer and the pooling (DenseNet), which CAM applies.
    `load_ignores` are key prefixes of published weights that the inference model drops (auxiliary heads).
    `refine_layer` is a block at twice the target layer's resolution whose mean activation sharpens the maps
    (`cam.refine`); the last block at stride 16 (where the target is at 32), None where the network has none
    (a ViT keeps one token grid throughout).
    `layout` is how the target layer's output is laid out (`camray.cam.tokens`): a feature map (`nchw`), patch
    tokens on their grid (`nhwc`), or a token sequence after `prefix_tokens` class/register tokens (`tokens`);
    `refine_layout` the same for the refining block.
    `downloaded_weights` fetches the published weights (needs internet) and returns the file and its source, where
    weights come from the model's own zoo (timm). `interpolation` is the resampling its weights were trained with.
    `build(num_classes=None)` builds the untrained network, with a head of `num_classes` outputs where given and
    `head_from_weights` says the builder takes it (a user's own factory builds its head as it likes); otherwise
    with `num_classes` outputs, the published weights' size. `categories` are the published weights' labels,
    empty where they are not known.
    """

    name: str
    build: Callable[..., nn.Module]
    target_layer: str
    classifier_layer: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    categories: tuple[str, ...]
    feature_relu: bool = False
    bundled_weights: Callable[[], str] | None = None
    finalize: Callable[[nn.Module], None] | None = None
    load_ignores: tuple[str, ...] = field(default_factory=tuple)
    refine_layer: str | None = None
    layout: Layout = "nchw"
    prefix_tokens: int = 0
    refine_layout: Layout = "nchw"
    downloaded_weights: Callable[[], tuple[Path, str]] | None = None
    interpolation: str = "bilinear"
    num_classes: int = 1000
    head_from_weights: bool = True

    @property
    def default_method(self) -> str:
        return "cam" if self.classifier_layer else "gradcam"


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """torchvision's 1,000 ImageNet labels (`torchvision.models._meta._IMAGENET_CATEGORIES`), read from its
    source file as a literal where torchvision is not imported yet (see `camray.models.registry`)."""
    loaded = sys.modules.get("torchvision.models._meta")
    if loaded is not None:
        return tuple(loaded._IMAGENET_CATEGORIES)
    package = importlib.util.find_spec("torchvision")
    if package is None or not package.submodule_search_locations:
        raise ImportError("torchvision is not installed")
    source = Path(next(iter(package.submodule_search_locations))) / "models" / "_meta.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "_IMAGENET_CATEGORIES" for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise ImportError(f"no `_IMAGENET_CATEGORIES` in {source}")
