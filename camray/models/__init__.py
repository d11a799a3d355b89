"""Models: the registry, weight resolution and the bundled EfficientNet-Lite, joined by `load_model`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from camray.cam.layers import resolve_layer
from camray.io.sources import S3Settings
from camray.models.registry import ModelSpec, available_models, get_spec
from camray.models.weights import (
    LoadedWeights,
    WeightsError,
    load_torchvision_weights,
    load_weights_file,
)

if TYPE_CHECKING:  # read as attributes only: the model loads where pydantic is not (the device benchmark)
    from camray.config import ModelConfig

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "WeightsError",
    "available_models",
    "get_spec",
    "load_model",
    "resolve_layer",
]


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode on the CPU with its spec and the provenance of its weights."""

    module: nn.Module
    spec: ModelSpec
    weights_sha256: str
    weights_source: str


def _resolve_weights(config: ModelConfig, spec: ModelSpec, s3: S3Settings) -> LoadedWeights:
    if config.weights:
        if config.weights.startswith("torchvision:"):
            return load_torchvision_weights(
                spec.name, config.weights.removeprefix("torchvision:"), config.weights_sha256
            )
        return load_weights_file(config.weights, s3, config.weights_sha256)
    if spec.bundled_weights is not None:
        return load_weights_file(spec.bundled_weights(), s3, config.weights_sha256)
    if spec.downloaded_weights is not None:
        path, source = spec.downloaded_weights()
        loaded = load_weights_file(str(path), s3, config.weights_sha256)
        return LoadedWeights(loaded.state_dict, loaded.sha256, source)
    if ":" in spec.name:
        raise WeightsError(f"`model.weights` is required for the custom model {spec.name!r}")
    return load_torchvision_weights(spec.name, "DEFAULT", config.weights_sha256)


def load_model(config: ModelConfig, s3: S3Settings | None = None) -> LoadedModel:
    """Builds the configured model, loads its weights strictly and checks its CAM layers."""
    s3 = s3 or S3Settings()
    spec = get_spec(config.name, config.target_layer, config.classifier_layer, config.input_size)
    weights = _resolve_weights(config, spec, s3)
    module = spec.build()
    state_dict = weights.state_dict
    if hasattr(module, "_load_reference_layout"):
        module._load_reference_layout(state_dict)
    else:
        result = module.load_state_dict(state_dict, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(spec.load_ignores or ("\0",))]
        if missing or result.unexpected_keys:
            raise WeightsError(
                f"weights {weights.source} do not fit {spec.name}: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]} (is `model.name` the architecture they were trained as?)"
            )
    if spec.finalize is not None:
        spec.finalize(module)
    resolve_layer(module, spec.target_layer, "model.target_layer")
    if spec.classifier_layer is not None:
        classifier = resolve_layer(module, spec.classifier_layer, "model.classifier_layer")
        if not isinstance(classifier, nn.Linear):
            raise ValueError(
                f"`model.classifier_layer` {spec.classifier_layer!r} is a {type(classifier).__name__}, not an nn.Linear"
            )
    module.eval()
    return LoadedModel(module, spec, weights.sha256, weights.source)
