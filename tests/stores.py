"""Stores for the store tests: fresh databases of each kind (SQLite, a PostgreSQL schema) opened
through the real path, ``new_store`` / ``open_store``, as a collection opens them; the fixtures
``open_db`` and ``store`` in conftest.py hand them out."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lookalike.storage import NewImage, Store, new_store, open_store

DIM = 8


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def image(uri: str, vector: np.ndarray | None = None, *, error: str | None = None,
          content_hash: str | None = None, metadata: str | None = None) -> NewImage:
    return NewImage(uri, 1000 + len(uri), 1_700_000_000_123_456_789, content_hash or f"h-{uri}",
                    64, 48, vector, error=error if vector is None else None, metadata=metadata)


Opener = Callable[[], Store]


def opener(kind: str, folder: Path, postgres_uri: str | None) -> Iterator[Opener]:
    given = postgres_uri if kind == "postgresql" else None
    recorded = new_store(given or "sqlite", folder, DIM)
    opened: list[Store] = []

    def open_one() -> Store:
        store = open_store(recorded, folder=folder, dim=DIM, given=given)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
