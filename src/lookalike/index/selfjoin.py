"""Every pair of vectors whose cosine passes a threshold: a self-join that never builds the N x N
matrix.

Up to :data:`EXACT_MAX` vectors are compared exactly, a band of rows against the rows after it.
A larger set is partitioned into k-means cells, learnt in a small PCA subspace (the cells only
have to put look-alikes together; the scores never come from it), and each vector is compared at
full dimension with the vectors of its ``nprobe`` nearest cells: one matrix product per cell,
between the cell's vectors and every vector that probes it. At 1M vectors that is about
``nprobe`` x 250 dot products per vector instead of 1M (benchmarks/bench_dedup.py measures the
recall of planted pairs). Each vector keeps its ``max_per_row`` best partners; a pair is kept
when it is among the best of either of its vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

EXACT_MAX = 20_000  # below this, exact bands cost less than learning cells (~3 s at 20k x 1280)
CELL_SIZE = 256  # vectors per k-means cell, on average
PCA_DIM = 64  # the subspace the cells are learnt and assigned in
PCA_SAMPLE = 20_000  # rows its directions are learnt from
POINTS_PER_CENTROID = 39  # training points per cell: the least Faiss's k-means takes quietly
BLOCK = 4096  # rows per matrix product: a 4096 x 4096 float32 block is 64 MB


@dataclass(frozen=True)
class Pairs:
    """Pairs of rows, ``left < right``, with their cosine, sorted by (left, right)."""

    left: np.ndarray  # int64
    right: np.ndarray  # int64
    score: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.left)

    @classmethod
    def empty(cls) -> Pairs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def similar_pairs(vectors: np.ndarray, threshold: float, *, max_per_row: int = 64,
                  nprobe: int = 8, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> Pairs:
    """The pairs of rows of ``vectors`` (n, d), L2-normalised, float16 or float32, whose cosine
    is at least ``threshold``, each row keeping its ``max_per_row`` best partners.
    ``progress(done, total)`` is called as the work advances."""
    n = len(vectors)
    if n < 2:
        return Pairs.empty()
    if n <= EXACT_MAX:
        found = _exact(vectors, threshold, max_per_row, progress)
    else:
        found = _partitioned(vectors, threshold, max_per_row, nprobe, seed, progress)
    return _best_per_row(found, max_per_row)


def _exact(vectors: np.ndarray, threshold: float, keep: int,
           progress: Callable[[int, int], None] | None) -> list[tuple[np.ndarray, ...]]:
    n, found = len(vectors), []
    for start in range(0, n, BLOCK):
        rows = np.asarray(vectors[start:start + BLOCK], np.float32)
        for other in range(start, n, BLOCK):
            cols = np.asarray(vectors[other:other + BLOCK], np.float32)
            scores = rows @ cols.T
            if other == start:  # each pair once: only right of the diagonal
                scores[np.tril_indices_from(scores)] = -np.inf
            found.append(_passing(scores, start + np.arange(len(rows)),
                                  other + np.arange(len(cols)), threshold, keep))
        if progress:
            progress(min(start + BLOCK, n), n)
    return found


def _partitioned(vectors: np.ndarray, threshold: float, keep: int, nprobe: int, seed: int,
                 progress: Callable[[int, int], None] | None) -> list[tuple[np.ndarray, ...]]:
    n = len(vectors)
    cells = max(2, n // CELL_SIZE)
    nprobe = min(nprobe, cells)
    probes = _nearest_cells(vectors, cells, nprobe, seed)
    home = probes[:, 0]
    members = _by_cell(home, cells)
    probers = _by_cell(probes.ravel(), cells, stride=nprobe)
    found = []
    for cell in range(cells):
        inside = members[cell]
        if len(inside):
            cols = np.asarray(vectors[inside], np.float32)
            for start in range(0, len(probers[cell]), BLOCK):
                rows_ids = probers[cell][start:start + BLOCK]
                scores = np.asarray(vectors[rows_ids], np.float32) @ cols.T
                scores[rows_ids[:, None] == inside[None, :]] = -np.inf  # itself
                found.append(_passing(scores, rows_ids, inside, threshold, keep))
        if progress and (cell % 64 == 63 or cell == cells - 1):
            progress(cell + 1, cells)
    return found


def _nearest_cells(vectors: np.ndarray, cells: int, nprobe: int, seed: int) -> np.ndarray:
    """(n, nprobe) the cells nearest each vector, nearest first, in a PCA subspace."""
    rng = np.random.default_rng(seed)
    n, d = vectors.shape
    sample = np.sort(rng.choice(n, size=min(n, cells * POINTS_PER_CENTROID), replace=False))
    train = np.asarray(vectors[sample], np.float32)
    mean = train.mean(axis=0)
    # The leading principal directions, from a d x d covariance of part of the sample (20,000
    # rows place 64 directions well; the whole sample in float64 would take GBs at 1,280-d).
    part = train[rng.choice(len(train), size=min(len(train), PCA_SAMPLE), replace=False)]
    _, eigenvectors = np.linalg.eigh(np.cov(part - mean, rowvar=False))
    basis = np.ascontiguousarray(eigenvectors[:, ::-1][:, :min(PCA_DIM, d)], np.float32)

    def reduced(rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((np.asarray(rows, np.float32) - mean) @ basis)

    kmeans = faiss.Kmeans(basis.shape[1], cells, niter=10, seed=seed, verbose=False)
    kmeans.train(reduced(train))
    probes = np.empty((n, nprobe), np.int64)
    for start in range(0, n, 65_536):
        _, probes[start:start + 65_536] = kmeans.index.search(
            reduced(vectors[start:start + 65_536]), nprobe)
    return probes


def _by_cell(cell_of: np.ndarray, cells: int, stride: int = 1) -> list[np.ndarray]:
    """For each cell, the rows assigned to it (``cell_of`` holds ``stride`` cells per row)."""
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(cells + 1))
    rows = order // stride
    return [rows[bounds[c]:bounds[c + 1]] for c in range(cells)]


def _passing(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, threshold: float,
             keep: int) -> tuple[np.ndarray, ...]:
    """(left, right, score) of the entries of ``scores`` at or above ``threshold`` that are among
    the ``keep`` best of their row or of their column (so, over all blocks, every vector's
    ``keep`` best partners are among them), as pairs of ids, left < right."""
    passing = scores >= threshold
    if scores.shape[1] > keep:  # else every entry is among its row's best
        best = scores >= np.partition(scores, -keep, axis=1)[:, -keep][:, None]
        if scores.shape[0] > keep:
            best |= scores >= np.partition(scores, -keep, axis=0)[-keep][None, :]
        passing &= best
    r, c = np.nonzero(passing)
    a, b = rows[r], cols[c]
    return np.minimum(a, b), np.maximum(a, b), scores[r, c].astype(np.float32)


def _best_per_row(found: list[tuple[np.ndarray, ...]], keep: int) -> Pairs:
    if not found:
        return Pairs.empty()
    left, right, score = (np.concatenate(parts) for parts in zip(*found, strict=True))
    if not len(left):
        return Pairs.empty()
    # A pair found from several cells once.
    key = np.unique(np.stack([left, right], axis=1), axis=0, return_index=True)[1]
    left, right, score = left[key], right[key], score[key]
    # Each pair ranked among every pair of each of its two vectors.
    ranks = _ranks_within(np.concatenate([left, right]), np.concatenate([score, score]))
    kept = (ranks[:len(left)] < keep) | (ranks[len(left):] < keep)
    left, right, score = left[kept], right[kept], score[kept]
    order = np.lexsort((right, left))
    return Pairs(left[order], right[order], score[order])


def _ranks_within(rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Each entry's rank by score, best first, among the entries of its row."""
    order = np.lexsort((-score, rows))
    sorted_rows = rows[order]
    first = np.searchsorted(sorted_rows, sorted_rows)  # where each entry's row starts
    ranks = np.empty(len(rows), np.int64)
    ranks[order] = np.arange(len(rows)) - first
    return ranks
