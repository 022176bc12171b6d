"""PCA (optionally whitened) to shrink the vectors an index holds.

The projection is learnt from a sample of stored vectors and applied to every vector entering an
index and to every query, then the result is L2-re-normalised so inner product stays cosine
similarity. Centring before projecting and re-normalising after is what makes PCA-whitening help
retrieval rather than hurt it (Jégou & Chum, "Negative evidences and co-occurrences", ECCV 2012).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError, UsageError
from .projection import (
    Projection,
    covariance,
    mean_of,
    signed,
    top_eigenvectors,
    write_npz,
)

_FORMAT = 1


class PCA(Projection):
    """A learnt linear map from ``in_dim`` to ``dim`` dimensions; outputs are unit vectors.

    ``apply(x) = normalise((x - mean) @ matrix)``, where the columns of ``matrix`` are the top
    ``dim`` eigenvectors of the sample covariance, sorted by variance, each divided by
    ``sqrt(eigenvalue + eps * top_eigenvalue)`` when whitened.
    """

    kind = "pca"
    command = "lookalike reduce"

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
        dim = self.components.shape[1]
        scale = np.ones(dim)
        if self.whiten:
            floor = self.eps * float(self.eigenvalues[0])
            denominator = np.sqrt(np.maximum(self.eigenvalues, 0.0) + floor)
            if not np.all(denominator > 0):
                raise UsageError(
                    "Cannot whiten: the sample has no variance in some kept direction; use "
                    "more (and different) vectors, a smaller dim, or eps > 0."
                )
            scale = 1.0 / denominator
        self._set_map(self.mean, self.components * scale)  # whitening folded in

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

        mean = mean_of(vectors, "PCA")
        if n < in_dim:  # fewer samples than dimensions: an SVD of the data is cheaper
            _, singular, rows = np.linalg.svd(vectors.astype(np.float64) - mean,
                                              full_matrices=False)
            eigenvalues = singular**2 / (n - 1)  # descending
            kept, components = eigenvalues[:dim], signed(rows.T[:, :dim])
            total = float(eigenvalues.sum())
        else:
            scatter = covariance(vectors, mean)
            kept, components = top_eigenvectors(scatter, dim)
            total = float(np.trace(scatter))
        return cls(
            mean, components, kept, total, whiten=whiten, eps=eps, trained_on=n
        )

    def save(self, path: Path) -> None:
        """Write to ``path`` (an ``.npz``) atomically and durably."""
        write_npz(path, format=np.int64(_FORMAT), kind=np.str_(self.kind), mean=self.mean,
                  components=self.components, eigenvalues=self.eigenvalues,
                  total_variance=np.float64(self.total_variance), whiten=np.bool_(self.whiten),
                  eps=np.float64(self.eps), trained_on=np.int64(self.trained_on))

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
