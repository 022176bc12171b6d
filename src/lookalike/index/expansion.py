"""Query expansion and database-side augmentation: re-weighting vectors by their neighbours.

Both replace a vector by a weighted sum of itself and its nearest neighbours, then L2-normalise:

* **αQE** (α-weighted query expansion; Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval
  with no human annotation", TPAMI 2018): search once, replace the query ``q`` by
  ``normalise(q + Σ_i s_i^α x_i)`` over its ``n`` nearest database vectors ``x_i`` with
  similarities ``s_i``, and search again. ``α = 0`` is plain average query expansion
  (Chum et al. 2007).
* **DBA** (database-side augmentation; Arandjelović & Zisserman, "Three things everyone should know
  to improve object retrieval", CVPR 2012, and Gordo et al., "End-to-end learning of deep visual
  representations for image retrieval", IJCV 2017): the same sum applied once, offline, to every
  database vector with its ``n`` nearest *other* database vectors. This is the α-weighted form
  (αDBA) of Radenović et al.

Negative similarities are clipped to zero before the power, so an unrelated neighbour never pulls
a vector away. Everything is exact inner-product search over unit vectors in numpy, in chunks, so
memory stays bounded; batch-first, ``(n, d)`` float32 in and out.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

#: Query rows per chunk when scoring against the whole database (bounds the score matrix).
_CHUNK = 1024


def nearest(
    queries: np.ndarray, database: np.ndarray, n: int, *, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` most similar database rows to each query by inner product, best first.

    ``exclude``, if given, holds one database row per query that may not be returned (``-1``:
    none), e.g. the query itself when the queries are database vectors. Ties go to the lower row.
    Returns ``(similarities, rows)``, both ``(len(queries), n)``.
    """
    queries, database = _as_matrix(queries), _as_matrix(database)
    if queries.shape[1] != database.shape[1]:
        raise UsageError(
            f"Queries have {queries.shape[1]} dimensions, the database {database.shape[1]}."
        )
    available = len(database) - (exclude is not None)
    if not 1 <= n <= available:
        raise UsageError(
            f"Cannot take {n} neighbours from a database of {len(database)} vectors; "
            f"use between 1 and {max(available, 0)}."
        )
    sims = np.empty((len(queries), n), np.float32)
    rows = np.empty((len(queries), n), np.int64)
    for start in range(0, len(queries), _CHUNK):
        scores = queries[start:start + _CHUNK] @ database.T
        if exclude is not None:
            own = np.asarray(exclude[start:start + _CHUNK])
            hit = own >= 0
            scores[np.flatnonzero(hit), own[hit]] = -np.inf
        # Stable sort on -score: equal scores keep database order, so results are reproducible.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        rows[start:start + len(order)] = order
        sims[start:start + len(order)] = np.take_along_axis(scores, order, axis=1)
    return sims, rows


def combine(
    vectors: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, rows: np.ndarray,
    alpha: float,
) -> np.ndarray:
    """``normalise(v + Σ_i max(s_i, 0)^α · neighbours[rows_i])`` for each row ``v`` of ``vectors``.

    The building block of both methods: ``sims`` and ``rows`` are what :func:`nearest` returned.
    """
    if alpha < 0:
        raise UsageError(f"The expansion exponent alpha must be >= 0, got {alpha}.")
    vectors, neighbours = _as_matrix(vectors), _as_matrix(neighbours)
    weights = np.power(np.maximum(sims, 0.0), alpha, dtype=np.float32)
    if alpha == 0:  # 0^0 is 1 in numpy; a neighbour with similarity <= 0 still gets no weight
        weights = np.where(sims > 0, weights, np.float32(0.0))
    out = vectors.copy()
    for start in range(0, len(out), _CHUNK):  # (chunk, n, d) gathered at a time, not (q, n, d)
        part = slice(start, start + _CHUNK)
        out[part] += np.einsum("qn,qnd->qd", weights[part], neighbours[rows[part]])
    return _normalise(out)


def alpha_query_expansion(
    queries: np.ndarray, database: np.ndarray, n: int, alpha: float = 3.0, *,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """αQE: each query plus its ``n`` nearest database vectors weighted by similarity^α.

    Search the database again with the returned ``(len(queries), d)`` unit vectors. ``exclude``
    is passed to :func:`nearest` (one database row per query to leave out, ``-1`` for none).
    """
    if n == 0:
        return _normalise(_as_matrix(queries))
    sims, rows = nearest(queries, database, n, exclude=exclude)
    return combine(queries, database, sims, rows, alpha)


def database_augmentation(database: np.ndarray, n: int, alpha: float = 3.0) -> np.ndarray:
    """DBA: each database vector plus its ``n`` nearest other database vectors weighted by
    similarity^α, computed once from the original vectors. Queries are searched against the result
    unchanged (or after :func:`alpha_query_expansion` against it)."""
    database = _as_matrix(database)
    if n == 0:
        return _normalise(database)
    sims, rows = nearest(database, database, n, exclude=np.arange(len(database)))
    return combine(database, database, sims, rows, alpha)


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise UsageError(f"Expected an (n, d) array of vectors, got shape {array.shape}.")
    return array


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
