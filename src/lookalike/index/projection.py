"""What the index holds instead of the model's vectors: a learnt linear map, then L2-normalising.

:class:`Projection` is the part every learnt map shares (applying it, and which file kind it is);
:class:`~lookalike.index.pca.PCA` (`lookalike reduce`) and
:class:`~lookalike.index.whitening.LearnedWhitening` (`lookalike learn`) learn one.
:func:`load_projection` opens either from the file a collection's manifest names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCollectionError, UsageError

_ONE_QUERY = 1  # rows projected without BLAS threads (see apply)
#: Rows per float64 chunk while accumulating a covariance (bounds the temporary copy to ~80 MB
#: at 1280 dimensions, whatever the sample size).
_CHUNK = 8192


class Projection:
    """``apply(x) = normalise((x - mean) @ matrix)`` from ``in_dim`` to ``dim`` dimensions."""

    #: How the file says which class wrote it (the ``kind`` entry of its ``.npz``).
    kind = ""
    #: The command that writes this kind of file, for error messages.
    command = ""

    in_dim: int
    dim: int

    def save(self, path: Path) -> None:
        """Write to ``path`` (an ``.npz`` that says its ``kind``) atomically and durably."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path) -> Projection:
        raise NotImplementedError

    def _set_map(self, mean: np.ndarray, matrix: np.ndarray) -> None:
        self.in_dim, self.dim = matrix.shape
        #: What ``apply`` multiplies by (float32) and then subtracts.
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self._bias = (np.asarray(mean, dtype=np.float64) @ matrix).astype(np.float32)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project (n, in_dim) vectors to (n, dim) float32 unit vectors."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.in_dim:
            raise UsageError(
                f"This projection maps {self.in_dim}-d vectors, got shape {vectors.shape}; the "
                f"collection's model and its projection disagree: run `{self.command}` again."
            )
        if len(vectors) <= _ONE_QUERY:
            # numpy's own loop: a BLAS call this size would wake a second OpenBLAS thread and
            # wait for a core that Faiss's OpenMP threads are spinning on (measured: 0.3 ms
            # instead of 17 ms p50 for one 1280 -> 512 query after a Faiss search). Not for more
            # rows: αQE's 10 hits take 2.8 ms so at 1280 -> 1280, 0.7 ms through BLAS (measured
            # with Flat and HNSW32 indexes: a search with αQE(2) 6.0 -> 3.6 ms).
            out = np.einsum("ij,jk->ik", vectors, self.matrix)
        else:
            out = vectors @ self.matrix
        out -= self._bias
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, np.float32(1e-12))
        return out


def mean_of(vectors: np.ndarray, what: str) -> np.ndarray:
    """The float64 mean of (n, d) ``vectors``, summed in chunks; UsageError on NaN or inf."""
    mean = np.zeros(vectors.shape[1])
    for start in range(0, len(vectors), _CHUNK):
        mean += vectors[start:start + _CHUNK].astype(np.float64).sum(axis=0)
    mean /= len(vectors)
    if not np.all(np.isfinite(mean)):
        raise UsageError(f"{what} input contains NaN or infinite values.")
    return mean


def covariance(vectors: np.ndarray, mean: np.ndarray, transform: np.ndarray | None = None
               ) -> np.ndarray:
    """The float64 covariance of ``(vectors - mean) @ transform`` (no transform: as they are),
    accumulated over chunks so memory beyond ``vectors`` stays small for a million rows."""
    dim = len(mean) if transform is None else transform.shape[1]
    scatter = np.zeros((dim, dim))
    for start in range(0, len(vectors), _CHUNK):
        chunk = vectors[start:start + _CHUNK].astype(np.float64) - mean
        if transform is not None:
            chunk = chunk @ transform
        scatter += chunk.T @ chunk
    return scatter / max(len(vectors) - 1, 1)


def top_eigenvectors(symmetric: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``dim`` largest eigenvalues of a symmetric matrix, descending, and their unit
    eigenvectors as columns, each signed so its largest entry is positive (eigenvector signs are
    arbitrary: fixing them makes a refit on the same sample give the same file)."""
    values, vectors = np.linalg.eigh(symmetric)  # ascending
    order = np.argsort(values, kind="stable")[::-1][:dim]
    return values[order], signed(vectors[:, order])


def signed(columns: np.ndarray) -> np.ndarray:
    """``columns`` with each column's sign fixed: its largest-magnitude entry is positive."""
    signs = np.sign(columns[np.argmax(np.abs(columns), axis=0), np.arange(columns.shape[1])])
    return columns * np.where(signs == 0, 1.0, signs)


def write_npz(path: Path, **arrays: Any) -> None:
    """Write ``arrays`` to ``path`` (an ``.npz``) atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_projection(path: Path) -> Projection:
    """The projection saved in ``path``, whichever kind wrote it."""
    from .pca import PCA
    from .whitening import LearnedWhitening

    try:
        with np.load(path, allow_pickle=False) as data:
            kind = str(data["kind"]) if "kind" in data.files else PCA.kind  # PCA files before it
    except (OSError, ValueError) as exc:
        raise CorruptCollectionError(
            f"Projection file {path} is unreadable ({exc}); run `lookalike learn` or "
            "`lookalike reduce` again (or `lookalike reduce --off` to search at full dimension)."
        ) from None
    kinds: dict[str, type[Projection]] = {PCA.kind: PCA, LearnedWhitening.kind: LearnedWhitening}
    if kind not in kinds:
        raise CorruptCollectionError(
            f"Projection file {path} is of kind {kind!r}, which this lookalike does not know "
            f"({', '.join(kinds)}); upgrade lookalike, or run `lookalike reduce --off`.")
    return kinds[kind].load(path)
