"""A model's layers by dotted module path, with errors that name the config field."""

from __future__ import annotations

from torch import nn


def resolve_layer(module: nn.Module, path: str, field: str) -> nn.Module:
    """The submodule at dotted `path`, or a ValueError naming the config field and the candidates."""
    try:
        return module.get_submodule(path)
    except AttributeError as exc:
        top = ", ".join(name for name, _ in module.named_children())
        raise ValueError(f"`{field}` {path!r} is not a layer of this model; its top-level layers are: {top}") from exc
