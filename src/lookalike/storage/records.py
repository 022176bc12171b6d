"""The records every store speaks: a stored image version, and an image to write."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One stored image version."""

    id: int
    uri: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None
    added_at: float = 0.0


@dataclass(frozen=True)
class NewImage:
    """An image to write: its file facts and either a vector or the reason it failed."""

    uri: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    width: int | None = None
    height: int | None = None
    vector: np.ndarray | None = None
    error: str | None = None
    metadata: str | None = None  # a JSON object, for images uploaded with metadata
