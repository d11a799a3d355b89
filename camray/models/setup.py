"""The model as a run uses it, resolved once: `ModelSetup`, and the network loaded from it.

`resolve_setup` runs once in the driver (and in process, in the benches and evaluations), before any work: it
builds the architecture (a `timm:` model is measured there, once), loads the weights, takes the head's size from
them, names the classes, picks the CAM method and the layers, and checks them all on the loaded network. What it
refuses is the user's to fix, with a message naming the field (`camray.errors.SetupError`).

`ModelSetup` is plain data: it crosses to the actors, which `load_model` it again without measuring anything, and
check that the weights they read are the ones the driver resolved (their SHA-256).

The settings are read as attributes of the config's sections (`model`, `cam`, `tiling`), never validated here, so
that the device benchmark runs this where pydantic is not installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from camray.cam.layers import resolve_layer
from camray.cam.methods import resolve_method
from camray.errors import SetupError
from camray.io.sources import S3Settings
from camray.models.heads import classes_in_weights, describe, shape_mismatches, strip_wrappers
from camray.models.labels import class_names
from camray.models.registry import ModelSpec, get_spec
from camray.models.timm_models import TIMM_PREFIX, unmeasured_timm_spec
from camray.models.weights import LoadedWeights, WeightsError, load_torchvision_weights, load_weights_file

if TYPE_CHECKING:  # read as attributes only: the model loads where pydantic is not (the device benchmark)
    from camray.config import CamConfig, ModelConfig, TilingConfig

Head = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class ModelSetup:
    """Everything a run decided about its model, as plain data.

    `weights` is the configured source (a file, `s3://`, `torchvision:NAME`, or None: bundled or published);
    `weights_sha256` the digest of the file the driver loaded from it. `num_classes` is the head's size, taken
    from the weights; `class_names` its labels (`camray.models.labels`). `head` says how logits become scores:
    `softmax` (one class an image) or `sigmoid` (independent probabilities, multi-label). `refine_layer` is the
    block whose mean activation refines maps (`cam.refine_layer`, else the model's own), None where there is none;
    the maps use it where the settings ask (`refine_layer_of`). The other layer and layout fields are
    `camray.models.spec.ModelSpec`'s, as measured or configured.
    """

    name: str
    weights: str | None
    weights_source: str
    weights_sha256: str
    num_classes: int
    class_names: tuple[str, ...]
    head: Head
    method: str
    target_layer: str
    classifier_layer: str | None
    refine_layer: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    layout: str
    prefix_tokens: int
    refine_layout: str
    feature_relu: bool

    def to_plain(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_plain(cls, data: dict[str, Any]) -> ModelSetup:
        data = dict(data)
        for name in ("class_names", "mean", "std"):
            data[name] = tuple(data[name])
        return cls(**data)


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on the CPU, its setup, and its spec with the setup's layers and class names."""

    module: nn.Module
    spec: ModelSpec
    setup: ModelSetup

    @property
    def weights_sha256(self) -> str:
        return self.setup.weights_sha256

    @property
    def weights_source(self) -> str:
        return self.setup.weights_source


def uses_refine_layer(cam: CamConfig, tiling: TilingConfig | None) -> bool:
    """Whether the maps need the mean activation of `cam.refine_layer`: refined maps, `layer` fusion of the
    tiles, or the whole image's refined map for the tiled images whose box is large."""
    return cam.refine or _tiling_needs_layer(tiling)


def _tiling_needs_layer(tiling: TilingConfig | None) -> bool:
    if tiling is None or not tiling.enabled:
        return False
    return tiling.fusion == "layer" or tiling.whole_image_above_area is not None


def refine_layer_of(spec: ModelSpec, cam: CamConfig, tiling: TilingConfig | None) -> str | None:
    """The block the maps take a finer activation from under these settings, or None: the one place that says
    when a model without one is refused (`SetupError`). `cam.refine` alone keeps the plain maps of a model with
    no finer block (one token grid throughout, a ViT); the tiled modes that fuse that block's activation cannot
    run without it."""
    if not uses_refine_layer(cam, tiling):
        return None
    path = cam.refine_layer or spec.refine_layer
    if path is None and _tiling_needs_layer(tiling):
        raise SetupError(
            "`tiling.fusion` `layer` and `tiling.whole_image_above_area` need `cam.refine_layer` for "
            f"{spec.name!r}: the module path of a block at twice the resolution of the target layer "
            "(e.g. `layer3` for a ResNet)"
        )
    return path


def _weights(config: ModelConfig, spec: ModelSpec, s3: S3Settings, expected_sha256: str | None) -> LoadedWeights:
    if config.weights:
        if config.weights.startswith("torchvision:"):
            return load_torchvision_weights(spec.name, config.weights.removeprefix("torchvision:"), expected_sha256)
        return load_weights_file(config.weights, s3, expected_sha256)
    if spec.bundled_weights is not None:
        return load_weights_file(spec.bundled_weights(), s3, expected_sha256)
    if spec.downloaded_weights is not None:
        path, source = spec.downloaded_weights()
        loaded = load_weights_file(str(path), s3, expected_sha256)
        return LoadedWeights(loaded.state_dict, loaded.sha256, source)
    if ":" in spec.name:
        raise WeightsError(f"`model.weights` is required for the custom model {spec.name!r}")
    return load_torchvision_weights(spec.name, "DEFAULT", expected_sha256)


def _own_layout(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights' keys in the module's own layout: training wrappers' prefixes off, a reference layout
    translated (`adapt_state_dict`, where the architecture has one)."""
    state_dict = strip_wrappers(state_dict, module.state_dict())
    adapt = getattr(module, "adapt_state_dict", None)
    return adapt(state_dict) if adapt is not None else state_dict


def _build_and_load(spec: ModelSpec, weights: LoadedWeights, num_classes: int | None) -> tuple[nn.Module, int]:
    """The network built with the weights' head and loaded strictly; its number of classes.

    `num_classes` None takes it from the weights: built with the default head first, and again with the weights'
    size where only the head differs (`camray.models.heads`)."""
    module = spec.build(num_classes=num_classes)
    built = num_classes or spec.num_classes
    state = _own_layout(module, weights.state_dict)
    mismatches = shape_mismatches(state, module.state_dict())
    if mismatches and num_classes is None and spec.head_from_weights:
        size = classes_in_weights(mismatches, spec.num_classes)
        if size is not None:
            module, built = spec.build(num_classes=size), size
            state = _own_layout(module, weights.state_dict)
            mismatches = shape_mismatches(state, module.state_dict())
    if mismatches:
        raise WeightsError(
            f"weights {weights.source} do not fit {spec.name}: {describe(mismatches[0], spec.name)}"
            + (f" (and {len(mismatches) - 1} more tensors)" if len(mismatches) > 1 else "")
            + "; is `model.name` the architecture they were trained as?"
        )
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(spec.load_ignores or ("\0",))]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"weights {weights.source} do not fit {spec.name}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (is `model.name` the architecture they were trained as?)"
        )
    if spec.finalize is not None:
        spec.finalize(module)
    module.eval()
    classifier = _classifier(module, spec)
    if spec.head_from_weights:
        return module, built
    return module, int(classifier.out_features) if classifier is not None else _outputs(module, spec)


def _classifier(module: nn.Module, spec: ModelSpec) -> nn.Linear | None:
    if spec.classifier_layer is None:
        return None
    classifier = resolve_layer(module, spec.classifier_layer, "model.classifier_layer")
    if not isinstance(classifier, nn.Linear):
        raise SetupError(
            f"`model.classifier_layer` {spec.classifier_layer!r} is a {type(classifier).__name__}, not an nn.Linear"
        )
    return classifier


def _outputs(module: nn.Module, spec: ModelSpec) -> int:
    """The number of classes a network of the user's own scores, measured by one forward."""
    with torch.inference_mode():
        logits = module(torch.zeros(1, 3, spec.input_size, spec.input_size))
    if logits.dim() != 2:
        raise SetupError(f"`model.name` {spec.name!r} returns {tuple(logits.shape)}, not (batch, classes)")
    return int(logits.shape[1])


def resolve_setup(
    model: ModelConfig,
    cam: CamConfig | None = None,
    tiling: TilingConfig | None = None,
    s3: S3Settings | None = None,
) -> LoadedModel:
    """Resolves the model's setup (the module docstring) and returns it with the loaded network.

    Raises `SetupError` (exit status 2) for what the user must fix: an unknown model, layer or method, weights
    that cannot be read or do not fit the architecture, a labels file of another size than the head."""
    s3 = s3 or S3Settings()
    try:
        # What needs no weights first: a model that cannot run is refused before any download.
        spec = get_spec(model.name, model.target_layer, model.classifier_layer, model.input_size)
        method = resolve_method(spec, cam.method if cam is not None else None)
        if cam is not None and cam.refine_layer:
            spec = replace(spec, refine_layer=cam.refine_layer)
        if cam is not None:
            refine_layer_of(spec, cam, tiling)
        weights = _weights(model, spec, s3, model.weights_sha256)
        module, num_classes = _build_and_load(spec, weights, None)
        names = class_names(num_classes, getattr(model, "labels", None), spec.categories or None, s3)
        resolve_layer(module, spec.target_layer, "model.target_layer")
        if spec.refine_layer is not None:
            resolve_layer(module, spec.refine_layer, "cam.refine_layer")
    except SetupError:
        raise
    except (ValueError, LookupError, WeightsError) as exc:  # the registry's, the methods' and the layers' refusals
        raise SetupError(str(exc)) from exc
    setup = ModelSetup(
        name=model.name,
        weights=model.weights,
        weights_source=weights.source,
        weights_sha256=weights.sha256,
        num_classes=num_classes,
        class_names=names,
        head=getattr(model, "head", "softmax"),
        method=method,
        target_layer=spec.target_layer,
        classifier_layer=spec.classifier_layer,
        refine_layer=spec.refine_layer,
        input_size=model.input_size or spec.input_size,
        mean=spec.mean,
        std=spec.std,
        interpolation=spec.interpolation,
        layout=spec.layout,
        prefix_tokens=spec.prefix_tokens,
        refine_layout=spec.refine_layout,
        feature_relu=spec.feature_relu,
    )
    return LoadedModel(module, _applied(spec, setup), setup)


def _applied(spec: ModelSpec, setup: ModelSetup) -> ModelSpec:
    """`spec` with the setup's decisions: its layers, layouts, input and class names."""
    return replace(
        spec,
        target_layer=setup.target_layer,
        classifier_layer=setup.classifier_layer,
        refine_layer=setup.refine_layer,
        input_size=setup.input_size,
        mean=setup.mean,
        std=setup.std,
        interpolation=setup.interpolation,
        layout=setup.layout,
        prefix_tokens=setup.prefix_tokens,
        refine_layout=setup.refine_layout,
        feature_relu=setup.feature_relu,
        categories=setup.class_names,
        num_classes=setup.num_classes,
    )


def load_model(setup: ModelSetup, s3: S3Settings | None = None) -> LoadedModel:
    """The network of a resolved setup (in an actor): built with its head, loaded from the same weights, whose
    SHA-256 must be the one the driver read. Nothing is measured again."""
    s3 = s3 or S3Settings()
    if setup.name.startswith(TIMM_PREFIX):
        spec = unmeasured_timm_spec(setup.name, setup.input_size)
    else:
        spec = get_spec(setup.name, setup.target_layer, setup.classifier_layer)
    spec = _applied(spec, setup)
    source = _Source(setup.weights)
    weights = _weights(source, spec, s3, setup.weights_sha256 or None)
    module, num_classes = _build_and_load(spec, weights, setup.num_classes if spec.head_from_weights else None)
    if num_classes != setup.num_classes:
        raise WeightsError(f"weights {weights.source} have {num_classes} classes, the run's setup {setup.num_classes}")
    return LoadedModel(module, spec, setup)


@dataclass(frozen=True)
class _Source:
    """The `model` fields `_weights` reads, for a setup's weights."""

    weights: str | None
