"""Learned discriminative whitening: the projection `lookalike learn` fits from a collection's own
images and edited copies of them.

Radenović, Tolias and Chum ("Fine-tuning CNN image retrieval with no human annotation", TPAMI
2018) whiten by the covariance of the differences between matching pairs, then rotate by the PCA
of the whitened data. Here a pair is an image's stored vector and the vector of a copy of it
that `lookalike learn` made (cropped, rotated, blurred, re-encoded...), so no labels are needed:
the directions in which copies move away from their originals are damped, the directions in
which different images differ are kept. The copies' covariance is shrunk towards a multiple of
the identity (``shrinkage``): with a few hundred pairs in 1,280 dimensions it is far from full
rank, and enough shrinkage keeps what category search needs (:data:`SHRINKAGE`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError, UsageError
from .projection import Projection, covariance, mean_of, top_eigenvectors, write_npz

_FORMAT = 2  # lookalikes that read only PCA files (format 1) refuse these instead of misreading
#: Shrinkage of the copies' covariance towards the identity, as a share of its mean variance.
#: Measured on CD-heavy and the labelled set (exact search, 1,000 pairs): 1.0 finds 0.915 of
#: heavily edited copies first but costs category search 0.016 mAP; 4.0 finds 0.908 and keeps
#: it (0.628 with αQE(2), against 0.626 without the projection); 8.0 finds 0.904.
SHRINKAGE = 4.0


class LearnedWhitening(Projection):
    """``apply(x) = normalise((x - mean) @ whitening @ rotation)``: ``whitening @ whitening.T``
    is the inverse of the (shrunk) covariance of original-minus-copy differences; rotation the
    top ``dim`` eigenvectors of the whitened sample's covariance. At full dimension there is no
    rotation: it would not change a single inner product."""

    kind = "learned"
    command = "lookalike learn"

    def __init__(self, mean: np.ndarray, matrix: np.ndarray, *, shrinkage: float, pairs: int,
                 trained_on: int) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.shrinkage = float(shrinkage)
        self.pairs = int(pairs)
        self.trained_on = int(trained_on)
        self._map = np.asarray(matrix, dtype=np.float64)
        self._set_map(self.mean, self._map)

    @classmethod
    def fit(cls, vectors: np.ndarray, originals: np.ndarray, copies: np.ndarray, *,
            dim: int | None = None, shrinkage: float = SHRINKAGE) -> LearnedWhitening:
        """Learn from ``vectors`` (n, d), a sample of the collection, and ``originals[i]`` /
        ``copies[i]`` (k, d), an image's vector and its copy's. ``dim``: dimensions to keep
        (None: all ``d``)."""
        vectors, originals, copies = (np.asarray(a) for a in (vectors, originals, copies))
        if vectors.ndim != 2 or len(vectors) < 2:
            raise UsageError("Learned whitening needs at least 2 images to learn from.")
        n, in_dim = vectors.shape
        if originals.shape != copies.shape or originals.ndim != 2 or originals.shape[1] != in_dim:
            raise UsageError(f"Learned whitening needs pairs of {in_dim}-d vectors, got "
                             f"{originals.shape} originals and {copies.shape} copies.")
        if len(originals) < 2:
            raise UsageError("Learned whitening needs at least 2 pairs of an image and its copy; "
                             "add more images.")
        dim = in_dim if dim is None else dim
        if not 1 <= dim <= in_dim:
            raise UsageError(f"Learned whitening to {dim} dimensions: pick a --dim between 1 and "
                             f"{in_dim} (the model's dimension).")
        if shrinkage <= 0:
            raise UsageError(f"Learned whitening needs a shrinkage above 0, got {shrinkage}.")
        differences = originals.astype(np.float64) - copies
        within = covariance(differences, np.zeros(in_dim))
        within += shrinkage * float(np.trace(within)) / in_dim * np.eye(in_dim)
        try:
            # within = L @ L.T, so inv(L).T whitens: 5x faster than an eigendecomposition.
            whitening = np.linalg.inv(np.linalg.cholesky(within)).T
        except np.linalg.LinAlgError:
            raise UsageError("Learned whitening input contains NaN or infinite values, or the "
                             "copies equal their originals.") from None
        mean = mean_of(vectors, "Learned whitening")
        if dim < in_dim:
            whitening = whitening @ top_eigenvectors(covariance(vectors, mean, whitening), dim)[1]
        return cls(mean, whitening, shrinkage=shrinkage, pairs=len(originals), trained_on=n)

    def save(self, path: Path) -> None:
        """Write to ``path`` (an ``.npz``) atomically and durably."""
        write_npz(path, format=np.int64(_FORMAT), kind=np.str_(self.kind), mean=self.mean,
                  matrix=self._map,
                  shrinkage=np.float64(self.shrinkage), pairs=np.int64(self.pairs),
                  trained_on=np.int64(self.trained_on))

    @classmethod
    def load(cls, path: Path) -> LearnedWhitening:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != _FORMAT:
                    raise CorruptCollectionError(
                        f"Learned projection {path} has format {int(data['format'])}, this "
                        f"lookalike reads {_FORMAT}; run `lookalike learn` again.")
                projection = cls(data["mean"], data["matrix"],
                                 shrinkage=float(data["shrinkage"]), pairs=int(data["pairs"]),
                                 trained_on=int(data["trained_on"]))
        except (OSError, KeyError, ValueError) as exc:
            raise CorruptCollectionError(
                f"Learned projection {path} is unreadable ({exc}); run `lookalike learn` again, "
                "or `lookalike learn --off` to search without it.") from None
        if projection.mean.shape != (projection.in_dim,):
            raise CorruptCollectionError(
                f"Learned projection {path} has inconsistent shapes; run `lookalike learn` again.")
        return projection

    def __repr__(self) -> str:
        return (f"LearnedWhitening({self.in_dim}->{self.dim}, pairs={self.pairs}, "
                f"trained_on={self.trained_on}, shrinkage={self.shrinkage:g})")
