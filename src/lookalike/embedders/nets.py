"""Torch modules: the embedding graph (with its pooling) around a backbone, and a torchvision/timm-
compatible ResNet-50.

Imported only when a model is built, so `lookalike --help` never pays for torch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..types import Preprocess
from .registry import Pooling

GEM_EPS = 1e-6  # GeM clamps activations here before the power, as cirtorch does


class FeatureMap(nn.Module):
    """Calls ``method`` of ``net``, which returns the last convolutional feature map."""

    def __init__(self, net: nn.Module, method: str) -> None:
        super().__init__()
        self.net = net
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.method)(x)


def gem(features: torch.Tensor, p: float, eps: float = GEM_EPS) -> torch.Tensor:
    """Generalised-mean pooling of an (n, c, h, w) map to (n, c): mean(max(x, eps)^p)^(1/p)."""
    return features.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class EmbeddingGraph(nn.Module):
    """uint8 NHWC pixels -> normalised input -> feature map -> pooling -> L2 norm.

    Pixel scaling, the extra input scales and pooling live inside the graph, so the exported model
    takes raw decoded pixels and the query and index paths cannot disagree about any of them.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    inv_std: torch.Tensor

    def __init__(
        self, backbone: nn.Module, preprocess: Preprocess, pooling: Pooling | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling or Pooling()
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(preprocess.std).view(1, 3, 1, 1))
        # Fixed output sizes (not scale factors) keep the exported Resize static and exact.
        self.sizes = [None if s == 1.0 else round(preprocess.size * s)
                      for s in self.pooling.scales]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float()
        x = (x - self.mean) * self.inv_std
        if len(self.sizes) == 1 and self.sizes[0] is None:
            # One pass at the input size: for average pooling this is, op for op, the graph
            # that built every collection before pooling variants existed.
            return nn.functional.normalize(self._pool(self.backbone(x)), dim=1)
        # Multi-scale as in cirtorch: unit vectors per scale, combined by the same generalised
        # mean as the pooling (an average for GAP), then normalised again.
        p = self.pooling.exponent
        terms = []
        for size in self.sizes:
            scaled = x if size is None else nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False
            )
            vector = nn.functional.normalize(self._pool(self.backbone(scaled)), dim=1)
            terms.append(vector if p == 1.0 else vector.clamp(min=GEM_EPS).pow(p))
        combined = torch.stack(terms).mean(dim=0)
        return nn.functional.normalize(combined if p == 1.0 else combined.pow(1.0 / p), dim=1)

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        if self.pooling.method == "gem":
            return gem(features, self.pooling.p)
        return features.mean(dim=(2, 3))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 (v1.5: stride in the 3x3 conv) with torchvision's and timm's parameter names."""

    layer1: nn.Sequential  # set in __init__ under torchvision's names
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(
            [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)], start=1
        ):
            layers = []
            for b in range(blocks):
                layers.append(
                    Bottleneck(inplanes, planes, stride if b == 0 else 1, downsample=b == 0)
                )
                inplanes = planes * 4
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, 1000)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
