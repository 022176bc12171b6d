"""The network of ``test-tiny``, the test suite's model (registered in conftest.py).

Random Fourier features of an 8x8 thumbnail: ``cos(W x + b)``, W and b drawn from a fixed seed,
so every process computes the same vectors. Their dot products approximate a Gaussian kernel of
the thumbnails' distance (Rahimi and Recht, 2007): an image is its own nearest neighbour and a
re-saved copy stays close, while different photos, and even two plain colours a little apart,
come out nearly orthogonal. It knows nothing about what a photo shows: tests of retrieval
quality use the real model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

GRID = 8  # the thumbnail is GRID x GRID
SEED = 0


class RandomFourierFeatures(nn.Module):
    """(n, 3, size, size) normalised pixels -> (n, dim, 1, 1) feature map.

    ``scale`` is the inverse kernel width, in normalised pixel values (a thumbnail is a
    3 * GRID * GRID vector of them): thumbnails 1/scale apart have similarity ~exp(-1/2).
    """

    def __init__(self, size: int, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        rng = np.random.default_rng(SEED)
        self.thumbnail = nn.AvgPool2d(size // GRID)
        self.project = nn.Conv2d(3, dim, kernel_size=GRID)  # one output pixel: W x + b
        weight = scale * rng.standard_normal((dim, 3, GRID, GRID))
        bias = rng.uniform(0.0, 2 * math.pi, dim)
        self.project.weight.data = torch.from_numpy(weight.astype(np.float32))
        self.project.bias.data = torch.from_numpy(bias.astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.project(self.thumbnail(x)))
