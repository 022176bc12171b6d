"""Embedders: pretrained CNNs that turn decoded pixels into L2-normalised vectors."""

from .registry import ModelSpec, get_model_spec, model_names, register_model
from .runtime import Embedder, describe_models, embedding_fingerprint

__all__ = [
    "Embedder",
    "ModelSpec",
    "describe_models",
    "embedding_fingerprint",
    "get_model_spec",
    "model_names",
    "register_model",
]
