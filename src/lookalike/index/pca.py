"""PCA (optionally whitened) to shrink the vectors an index holds.

The projection is learnt from a sample of stored vectors and applied to every vector entering an
index and to every query, then the result is L2-re-normalised so inner product stays cosine
similarity. Centring before projecting and re-normalising after is what makes PCA-whitening help
retrieval rather than hurt it (Jégou & Chum, "Negative evidences and co-occurrences", ECCV 2012).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError, UsageError

#: Rows per float64 chunk while accumulating the covariance (bounds the temporary copy to ~80 MB
#: at 1280 dimensions, whatever the sample size).
_CHUNK = 8192
_FORMAT = 1
_SMALL_BATCH = 16  # queries: projected without BLAS threads (see apply)


class PCA:
    """A learnt linear map from ``in_dim`` to ``dim`` dimensions; outputs are unit vectors.

    ``apply(x) = normalise((x - mean) @ matrix)``, where the columns of ``matrix`` are the top
    ``dim`` eigenvectors of the sample covariance, sorted by variance, each divided by
    ``sqrt(eigenvalue + eps * top_eigenvalue)`` when whitened.
    """

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        eigenvalues: np.ndarray,
        total_variance: float,
        *,
        whiten: bool,
        eps: float,
        trained_on: int,
    ) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        #: (in_dim, dim) unit eigenvectors, highest variance first.
        self.components = np.asarray(components, dtype=np.float64)
        #: The ``dim`` kept eigenvalues, descending.
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        self.total_variance = float(total_variance)
        self.whiten = bool(whiten)
        self.eps = float(eps)
        self.trained_on = int(trained_on)
        self.in_dim, self.dim = self.components.shape
        scale = np.ones(self.dim)
        if self.whiten:
            floor = self.eps * float(self.eigenvalues[0])
            denominator = np.sqrt(np.maximum(self.eigenvalues, 0.0) + floor)
            if not np.all(denominator > 0):
                raise UsageError(
                    "Cannot whiten: the sample has no variance in some kept direction; use "
                    "more (and different) vectors, a smaller dim, or eps > 0."
                )
            scale = 1.0 / denominator
        #: What ``apply`` multiplies by (float32, whitening folded in) and then subtracts.
        self.matrix = (self.components * scale).astype(np.float32)
        self._bias = (self.mean @ (self.components * scale)).astype(np.float32)

    @property
    def explained_variance_ratio(self) -> float:
        """Share of the sample's total variance the kept dimensions carry (before whitening)."""
        if self.total_variance <= 0:
            return 0.0
        return float(self.eigenvalues.sum() / self.total_variance)

    @classmethod
    def fit(
        cls, vectors: np.ndarray, dim: int, *, whiten: bool = False, eps: float = 1e-2
    ) -> PCA:
        """Learn a ``dim``-dimensional projection from ``vectors`` (n, in_dim).

        The covariance is accumulated in float64 over mean-centred chunks and eigendecomposed,
        so memory beyond ``vectors`` stays small even for a million rows (with fewer rows than
        dimensions, the centred data's SVD gives the same components, faster). ``eps`` regularises
        whitening *relative to the largest eigenvalue*: no direction is amplified more than
        ``1/sqrt(eps)`` times the top one, so low-variance (mostly noise) directions cannot
        dominate the cosine, and rank-deficient samples still whiten. ``eps=0`` is exact
        whitening (covariance = identity on the sample).
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise UsageError(f"PCA needs a 2-D (n, d) array of vectors, got shape {vectors.shape}.")
        n, in_dim = vectors.shape
        if not 1 <= dim < in_dim:
            raise UsageError(
                f"PCA dim {dim} must be between 1 and {in_dim - 1} (the vectors have {in_dim} "
                "dimensions); pick a smaller --dim, e.g. 256."
            )
        if dim > n:
            raise UsageError(
                f"PCA to {dim} dimensions needs at least {dim} vectors to learn from, got {n}; "
                "add more images or pick --dim of at most the number of images."
            )
        if n < 2:
            raise UsageError("PCA needs at least 2 vectors to learn from; add more images.")
        if eps < 0:
            raise UsageError(f"PCA eps must be >= 0, got {eps}.")

        mean = np.zeros(in_dim)
        for start in range(0, n, _CHUNK):
            mean += vectors[start:start + _CHUNK].astype(np.float64).sum(axis=0)
        mean /= n
        if not np.all(np.isfinite(mean)):
            raise UsageError("PCA input contains NaN or infinite values.")
        if n < in_dim:  # fewer samples than dimensions: an SVD of the data is cheaper
            _, singular, rows = np.linalg.svd(vectors.astype(np.float64) - mean,
                                              full_matrices=False)
            eigenvalues, eigenvectors = singular**2 / (n - 1), rows.T  # descending
        else:
            scatter = np.zeros((in_dim, in_dim))
            for start in range(0, n, _CHUNK):
                chunk = vectors[start:start + _CHUNK].astype(np.float64) - mean
                scatter += chunk.T @ chunk
            eigenvalues, eigenvectors = np.linalg.eigh(scatter / (n - 1))  # ascending
        order = np.argsort(eigenvalues, kind="stable")[::-1][:dim]
        kept, components = eigenvalues[order], eigenvectors[:, order]
        # Eigenvector signs are arbitrary; fix them (largest entry positive) so a refit on the
        # same sample gives the same file.
        signs = np.sign(components[np.argmax(np.abs(components), axis=0), np.arange(dim)])
        components = components * np.where(signs == 0, 1.0, signs)
        total = float(np.clip(eigenvalues, 0.0, None).sum())
        return cls(
            mean, components, kept, total, whiten=whiten, eps=eps, trained_on=n
        )

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Project (n, in_dim) vectors to (n, dim) float32 unit vectors."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.in_dim:
            raise UsageError(
                f"This PCA maps {self.in_dim}-d vectors, got shape {vectors.shape}; the "
                "collection's model and its PCA disagree: run `lookalike reduce` again."
            )
        if len(vectors) <= _SMALL_BATCH:
            # numpy's own loop: a BLAS call this size would wake a second OpenBLAS thread and
            # wait for a core that Faiss's OpenMP threads are spinning on (measured: 0.3 ms
            # instead of 17 ms p50 for one 1280 -> 512 query after a Faiss search).
            out = np.einsum("ij,jk->ik", vectors, self.matrix)
        else:
            out = vectors @ self.matrix
        out -= self._bias
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, np.float32(1e-12))
        return out

    def save(self, path: Path) -> None:
        """Write to ``path`` (an ``.npz``) atomically and durably."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                format=np.int64(_FORMAT),
                mean=self.mean,
                components=self.components,
                eigenvalues=self.eigenvalues,
                total_variance=np.float64(self.total_variance),
                whiten=np.bool_(self.whiten),
                eps=np.float64(self.eps),
                trained_on=np.int64(self.trained_on),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> PCA:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != _FORMAT:
                    raise CorruptCollectionError(
                        f"PCA file {path} has format {int(data['format'])}, this lookalike "
                        f"reads {_FORMAT}; run `lookalike reduce` again."
                    )
                pca = cls(
                    data["mean"],
                    data["components"],
                    data["eigenvalues"],
                    float(data["total_variance"]),
                    whiten=bool(data["whiten"]),
                    eps=float(data["eps"]),
                    trained_on=int(data["trained_on"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise CorruptCollectionError(
                f"PCA file {path} is unreadable ({exc}); run `lookalike reduce` again, or "
                "`lookalike reduce --off` to search at full dimension."
            ) from None
        if pca.mean.shape != (pca.in_dim,) or pca.eigenvalues.shape != (pca.dim,):
            raise CorruptCollectionError(
                f"PCA file {path} has inconsistent shapes; run `lookalike reduce` again."
            )
        return pca

    def __repr__(self) -> str:
        whitened = ", whiten" if self.whiten else ""
        return (
            f"PCA({self.in_dim}->{self.dim}{whitened}, trained_on={self.trained_on}, "
            f"explained_variance={self.explained_variance_ratio:.3f})"
        )
