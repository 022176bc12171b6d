"""ResNet-50, the classic CBIR blueprint: 2048-d global-average-pooled ImageNet features.

Weights come from a file the user gives (torchvision or timm state dict), or from torchvision's
download location (the torch hub cache, fetched when the network allows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import WeightsError
from ..types import Preprocess
from .registry import ModelSpec, register_with_pooling_variants
from .weights import file_digest, load_state_dict

if TYPE_CHECKING:
    import torch

# torchvision's IMAGENET1K_V2 weights; the hub cache is checked before any download.
TORCHVISION_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"


def _default_weights() -> str:
    import torch

    try:
        torch.hub.load_state_dict_from_url(TORCHVISION_URL, progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - any download failure means the same thing here
        raise WeightsError(
            "resnet50 needs ImageNet weights and they could not be downloaded "
            f"({type(exc).__name__}: {exc}). Pass a torchvision or timm ResNet-50 state dict "
            "with --weights PATH."
        ) from None
    from pathlib import Path

    return str(Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_URL.rsplit("/", 1)[1])


def _build(weights: str | None) -> torch.nn.Module:
    from .nets import FeatureMap, ResNet50

    path = weights or _default_weights()
    state = load_state_dict(path)
    net = ResNet50()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.") and "num_batches_tracked" not in k]
    if missing or unexpected:
        raise WeightsError(
            f"{path} is not a ResNet-50 state dict: {len(missing)} missing parameters "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )
    return FeatureMap(net, "forward_features").eval()


def _weights_id(weights: str | None) -> str:
    return file_digest(weights) if weights else "torchvision-imagenet1k-v2"


register_with_pooling_variants(
    ModelSpec(
        name="resnet50",
        dim=2048,
        preprocess=Preprocess(
            size=224,
            resize="squash",
            mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
            std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
        ),
        build=_build,
        weights_id=_weights_id,
        description="ResNet-50, ImageNet, 224px, 2048-d (weights from --weights or torch hub)",
        needs_weights_file=True,
    )
)
