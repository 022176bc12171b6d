"""The model registry: built-in models register themselves exactly like a plugin would."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from ..errors import UnknownNameError, UsageError
from ..types import Preprocess

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Pooling:
    """How a feature map becomes one vector: the pooling, and the input scales it is pooled at.

    ``method`` is ``"avg"`` (global average pooling) or ``"gem"`` (generalised mean with exponent
    ``p``, Radenović et al. 2018; ``p`` = 1 is the average, large ``p`` tends to the maximum).
    ``scales`` resizes the model input inside the graph and runs the backbone once per scale; the
    per-scale unit vectors are combined by the same generalised mean (cirtorch's multi-scale).
    """

    method: Literal["avg", "gem"] = "avg"
    p: float = 3.0
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.method not in ("avg", "gem"):
            raise UsageError(f"Unknown pooling {self.method!r}; choose avg or gem.")
        if self.p <= 0 or not self.scales or min(self.scales) <= 0:
            raise UsageError(
                f"Pooling needs p > 0 and positive scales, got p={self.p}, scales={self.scales}."
            )

    @property
    def exponent(self) -> float:
        """The generalised-mean exponent actually used: 1 for average pooling."""
        return self.p if self.method == "gem" else 1.0

    @property
    def relative_cost(self) -> float:
        """Backbone compute relative to one pass at the model's input size (pixels scale as s²)."""
        return sum(s * s for s in self.scales)

    @property
    def tag(self) -> str:
        """A stable name for fingerprints and cache files; empty for the default (avg, scale 1),
        so the vectors of collections built before pooling variants existed stay valid."""
        parts = [] if self.method == "avg" else [f"gem{self.p:g}"]
        if self.scales != (1.0,):
            parts.append("ms" + "+".join(f"{s:g}" for s in self.scales))
        return "-".join(parts)

    def describe(self) -> str:
        """E.g. ``GeM pooling (p=3) at scales 1, 1/√2, 1.5x compute``."""
        pool = "global average pooling" if self.method == "avg" else f"GeM pooling (p={self.p:g})"
        if self.scales != (1.0,):
            pool += " at scales " + ", ".join(_scale_name(s) for s in self.scales)
        return f"{pool}, {self.relative_cost:.2g}x compute"


def _scale_name(scale: float) -> str:
    for text, value in (("1/√2", 1 / math.sqrt(2)), ("√2", math.sqrt(2))):
        if math.isclose(scale, value):
            return text
    return f"{scale:g}"


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: its name, output size, preprocessing and how to build its network.

    ``build(weights)`` returns a torch module mapping normalised NCHW float input to an
    (n, dim, h, w) feature map; ``pooling`` and L2 normalisation are added by the runtime.
    ``description`` is about the backbone; listings append ``pooling.describe()`` to it.
    ``weights_id(weights)`` names the weights for caching (a file digest or a package version).
    """

    name: str
    dim: int
    preprocess: Preprocess
    build: Callable[[str | None], torch.nn.Module]
    weights_id: Callable[[str | None], str]
    description: str = ""
    needs_weights_file: bool = False
    pooling: Pooling = Pooling()
    extra: dict[str, Any] = field(default_factory=dict)


# name suffix -> pooling of the retrieval variants registered beside every built-in model.
# Scales {1, 1/√2} cost 1.5 passes; cirtorch's third scale, √2, would bring it to 3.5.
MULTI_SCALE = (1.0, 1 / math.sqrt(2))
POOLING_VARIANTS = {
    "gem": Pooling("gem", p=3.0),
    "ms": Pooling("avg", scales=MULTI_SCALE),
    "gem-ms": Pooling("gem", p=3.0, scales=MULTI_SCALE),
}


def register_with_pooling_variants(spec: ModelSpec) -> ModelSpec:
    """Register ``spec`` and, as ``<name>-gem``, ``-ms`` and ``-gem-ms``, the same backbone
    with each pooling in ``POOLING_VARIANTS``."""
    for suffix, pooling in POOLING_VARIANTS.items():
        register_model(replace(spec, name=f"{spec.name}-{suffix}", pooling=pooling))
    return register_model(spec)


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
