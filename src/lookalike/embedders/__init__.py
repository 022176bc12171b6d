"""Embedders: pretrained CNNs that turn decoded pixels into L2-normalised vectors."""

from .registry import ModelSpec, get_model_spec, model_names, register_model
from .runtime import Embedder, describe_models

__all__ = [
    "Embedder", "ModelSpec", "describe_models", "get_model_spec", "model_names", "register_model",
]
