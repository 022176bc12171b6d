"""Reading checkpoint files in the formats people actually have (torchvision, timm, Lightning)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, WeightsError

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "model.", "backbone.")


def file_digest(path: str) -> str:
    """A short content digest of a weights file, so a changed file gets a new cached graph."""
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: str) -> dict[str, Any]:
    """Tensors by parameter name from a .pth/.pt/.bin (torch) or .safetensors file.

    Unwraps ``{"state_dict": ...}``-style containers and ``module.``/``model.`` prefixes.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"Weights file {path} does not exist; check the --weights path.")
    try:
        if file.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise MissingDependencyError(
                    "safetensors", "Reading .safetensors weights", "pip install safetensors"
                ) from None
            state: Any = load_file(str(file))
        else:
            import torch

            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise WeightsError(f"Cannot read weights file {path}: {exc}") from None
    for key in _NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"Weights file {path} holds no state dict (parameter name -> tensor).")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
