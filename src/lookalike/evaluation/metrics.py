"""Retrieval metrics from a score matrix and a relevance matrix: AP, mAP, P@1, recall@k, hit@k.

Definitions, per query, over the ranking of every database item by descending score:

* **AP** (average precision) = ``(1/R) Σ_{k: item k relevant} precision@k``, ``R`` = the number of
  relevant items in the database. **mAP** is its mean over queries.
* **P@1** (precision at 1) = 1 when the top item is relevant, else 0; averaged over queries.
* **recall@k** = the fraction of the query's ``R`` relevant items ranked within the top ``k``,
  averaged over queries. With one relevant item per query (copy detection) it equals hit@k.
* **hit@k** = 1 when at least one relevant item is within the top ``k``; averaged over queries.

In copy detection a query has one right answer, the picture it is a copy of, which any of several
database files may show (a photo stored twice, resized or mirrored): scored with ``one_answer``,
only the first relevant item of the ranking counts, so AP = 1 / (its rank) and recall@k = hit@k.

Ties are broken pessimistically and deterministically: among equal scores, irrelevant items rank
before relevant ones, then by database position. A constant (useless) embedding therefore scores
as badly as possible instead of as well as the database order happens to allow. Excluded items
(e.g. the query itself, in leave-one-out protocols) are removed from the ranking. Queries with no
relevant item have no AP; they are left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class QueryScores:
    """Per-query results: arrays of length ``queries`` (``recall``/``hit``: ``(queries, len(ks))``).

    ``first_rank`` is the 1-based rank of the first relevant item (0 when a query has none).
    """

    ks: tuple[int, ...]
    ap: np.ndarray
    first_rank: np.ndarray
    recall: np.ndarray
    hit: np.ndarray
    relevant: np.ndarray

    def __len__(self) -> int:
        return len(self.ap)

    def select(self, mask: np.ndarray) -> QueryScores:
        """The queries where ``mask`` is true (e.g. one edit type)."""
        return QueryScores(self.ks, self.ap[mask], self.first_rank[mask], self.recall[mask],
                           self.hit[mask], self.relevant[mask])

    @staticmethod
    def concatenate(parts: Sequence[QueryScores]) -> QueryScores:
        if not parts:
            raise UsageError("No query scores to combine.")
        return QueryScores(
            parts[0].ks, *(np.concatenate([getattr(p, f) for p in parts])
                           for f in ("ap", "first_rank", "recall", "hit", "relevant"))
        )

    def summary(self) -> Summary:
        """Means over the queries that have at least one relevant item."""
        valid = self.relevant > 0
        n = int(valid.sum())
        if n == 0:
            nan = float("nan")
            return Summary(0, len(self), nan, nan, dict.fromkeys(self.ks, nan),
                           dict.fromkeys(self.ks, nan))
        return Summary(
            queries=n,
            skipped=int(len(self) - n),
            map=float(self.ap[valid].mean()),
            precision_at_1=float((self.first_rank[valid] == 1).mean()),
            recall_at={k: float(self.recall[valid, i].mean()) for i, k in enumerate(self.ks)},
            hit_at={k: float(self.hit[valid, i].mean()) for i, k in enumerate(self.ks)},
        )


@dataclass(frozen=True)
class Summary:
    """Mean metrics over ``queries`` queries; ``skipped`` had no relevant item in the database."""

    queries: int
    skipped: int
    map: float
    precision_at_1: float
    recall_at: dict[int, float]
    hit_at: dict[int, float]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recall_at"] = {str(k): v for k, v in self.recall_at.items()}
        data["hit_at"] = {str(k): v for k, v in self.hit_at.items()}
        return data


def score_queries(
    scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int],
    exclude: np.ndarray | None = None, *, one_answer: bool = False,
) -> QueryScores:
    """Metrics for each row of ``scores`` (queries × database) given boolean ``relevant`` of the
    same shape; ``exclude`` (same shape, optional) marks items to leave out of a query's ranking.
    With ``one_answer``, the relevant items of a query are one answer found at the first of them.
    """
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise UsageError(
            f"scores {scores.shape} and relevant {relevant.shape} must be equal 2-D shapes."
        )
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise UsageError(f"Cut-offs k must be at least 1, got {ks}.")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        relevant = relevant & ~exclude
        scores = np.where(exclude, -np.inf, scores)
    # np.lexsort sorts by the last key first: score descending, then irrelevant before relevant,
    # then (being stable) database position.
    order = np.lexsort((relevant.astype(np.int8), -scores), axis=-1)
    ranked = np.take_along_axis(relevant, order, axis=1)
    if exclude is not None:  # excluded items sort last (score -inf) and are never relevant
        kept = (~exclude).sum(axis=1)
        ranked &= np.arange(ranked.shape[1]) < kept[:, None]
    if one_answer:
        ranked &= np.cumsum(ranked, axis=1) == 1
    return _from_ranked(ranked, ks)


def _from_ranked(ranked: np.ndarray, ks: tuple[int, ...]) -> QueryScores:
    n_relevant = ranked.sum(axis=1)
    hits_so_far = np.cumsum(ranked, axis=1)
    positions = np.arange(1, ranked.shape[1] + 1)
    precision_sum = np.where(ranked, hits_so_far / positions, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_relevant > 0, precision_sum / np.maximum(n_relevant, 1), np.nan)
    first = np.where(n_relevant > 0, ranked.argmax(axis=1) + 1, 0)
    found = np.stack([hits_so_far[:, min(k, ranked.shape[1]) - 1] for k in ks], axis=1)
    recall = found / np.maximum(n_relevant, 1)[:, None]
    return QueryScores(ks, ap, first, recall, (found > 0).astype(np.float64), n_relevant)
