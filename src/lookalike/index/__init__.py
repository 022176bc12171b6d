"""Vector indexes: the only part of lookalike that imports a vector engine.

:func:`build_index` and :func:`load_index` pick the backend from the spec (and the file): Faiss
for ``Flat``, ``HNSW…`` and ``IVF…``, ScaNN for ``ScaNN…``. Both backends satisfy
:class:`VectorIndex`.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Protocol

import numpy as np

from .faiss_index import FaissIndex, omp_threads
from .pca import PCA
from .projection import Projection, load_projection
from .scann_index import ScannIndex, is_scann_file
from .spec import AUTO_HNSW_THRESHOLD, IndexSpec, parse_spec

__all__ = [
    "AUTO_HNSW_THRESHOLD", "PCA", "FaissIndex", "IndexSpec", "Projection", "ScannIndex",
    "VectorIndex", "build_index", "load_index", "load_projection", "omp_threads", "parse_spec",
]


class VectorIndex(Protocol):
    """What every index backend offers (ids are the store's primary keys)."""

    spec: IndexSpec

    @property
    def dim(self) -> int: ...
    @property
    def ntotal(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...
    def ids(self) -> np.ndarray: ...
    def max_id(self) -> int: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def save(self, path: Path) -> None: ...
    def search(self, queries: np.ndarray, k: int, *, ef_search: int | None = None,
               nprobe: int | None = None, k_factor: int | None = None,
               leaves: int | None = None, exclude: Collection[int] = (),
               allowed: np.ndarray | None = None,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), best first, -1 padding; only ``allowed`` ids when given (each
        compared exactly with ``exact``, where the engine can tell it to)."""
        ...


def build_index(spec: IndexSpec, dim: int, ids: np.ndarray | None = None,
                vectors: np.ndarray | None = None, *,
                train: np.ndarray | None = None) -> FaissIndex | ScannIndex:
    """A new index of ``spec`` holding ``vectors`` under ``ids``.

    A trainable spec learns from ``train`` (an (n, dim) float32 sample; default: ``vectors``).
    With fewer vectors to train on than the spec needs, and for ``auto`` while small, the index
    is exact Flat and its ``spec.describe`` says why. Faiss builds use the OpenMP threads
    :func:`omp_threads` allows; ScaNN's training uses as many.
    """
    import faiss

    n = 0 if ids is None else len(ids)
    # ScaNN samples its training vectors from the ones it holds: ``train`` does not count there.
    trains = spec.trainable and spec.kind != "scann"
    concrete = spec.for_size(len(train) if train is not None and trains else n)
    if concrete.kind == "scann":
        return ScannIndex.build(concrete, dim, ids, vectors,
                                threads=faiss.omp_get_max_threads())
    return FaissIndex.build(concrete, dim, ids, vectors, train=train)


def load_index(path: Path, spec: IndexSpec) -> FaissIndex | ScannIndex:
    """Read an index file written by either backend's ``save``; the kind comes from the file
    (a trainable spec may have been built Flat), ``spec.text`` from the caller."""
    if is_scann_file(path):
        return ScannIndex.load(path, spec)
    return FaissIndex.load(path, spec)
