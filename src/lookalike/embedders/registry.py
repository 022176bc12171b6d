"""The model registry: built-in models register themselves exactly like a plugin would."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UnknownNameError
from ..types import Preprocess

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: its name, output size, preprocessing and how to build its network.

    ``build(weights)`` returns a torch module mapping normalised NCHW float input to an
    (n, dim, h, w) feature map; pooling and L2 normalisation are added by the runtime.
    ``weights_id(weights)`` names the weights for caching (a file digest or a package version).
    """

    name: str
    dim: int
    preprocess: Preprocess
    build: Callable[[str | None], torch.nn.Module]
    weights_id: Callable[[str | None], str]
    description: str = ""
    needs_weights_file: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (plugins call this too). Re-registering a name replaces it."""
    _MODELS[spec.name] = spec
    return spec


def get_model_spec(name: str) -> ModelSpec:
    """The registered model called ``name``; unknown names raise with the close matches."""
    _load_builtins()
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        raise UnknownNameError("model", name, list(_MODELS), close) from None


def model_names() -> list[str]:
    _load_builtins()
    return sorted(_MODELS)


def _load_builtins() -> None:
    from . import efficientnet, resnet  # noqa: F401  (importing registers them)
