"""Searching a collection: the nearest images to an image, an indexed image or a vector,
ranked with α query expansion. :class:`lookalike.Collection` owns one :class:`Searcher`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import settings
from ..errors import ImageNotFoundError, UsageError
from ..imaging import ImageSource
from ..index.expansion import combine
from ..storage import ImageRecord, Store
from ..types import SearchHit
from .indexes import Indexes


class Searcher:
    """Searches over a collection's store and index, embedding queries with ``embed``."""

    def __init__(self, store: Store, indexes: Indexes,
                 embed: Callable[[list[Any]], np.ndarray]) -> None:
        self.store = store
        self._indexes = indexes
        self._embed = embed

    def search(self, image: ImageSource | Any, k: int = 10, *, ef: int | None = None,
               qe: int | None = None) -> list[SearchHit]:
        """The ``k`` indexed images most similar to ``image`` (a path, file bytes or PIL image)."""
        return self.search_vector(self._embed([image])[0], k, ef=ef, qe=qe)

    def search_similar(self, image_id: int, k: int = 10, *, ef: int | None = None,
                       qe: int | None = None) -> list[SearchHit]:
        """Look-alikes of an indexed image, from its stored vector (the image itself excluded)."""
        vector = self.store.vector(image_id)
        record = self.store.get([image_id]).get(image_id)
        if vector is None or record is None or record.status != "active":
            raise ImageNotFoundError(f"No indexed image has id {image_id}.")
        return self.search_vector(vector, k, ef=ef, qe=qe, exclude={image_id})

    def search_vector(self, vector: np.ndarray, k: int = 10, *, ef: int | None = None,
                      qe: int | None = None, exclude: set[int] | None = None) -> list[SearchHit]:
        """The ``k`` images nearest to an embedding, ranked best first.

        With query expansion (``qe`` > 0; default: the ``query_expansion`` setting), a first
        search finds the ``qe`` best matches and the list is ranked by the query blended with
        them (αQE, see :mod:`lookalike.index.expansion`); each score is still the similarity to
        ``vector`` itself, so a score may exceed the one ranked above it.
        """
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}.")
        qe = settings.resolve("query_expansion", qe)
        if qe < 0:
            raise UsageError(f"Query expansion takes a number of matches >= 0, got {qe}.")
        knobs = self._indexes.search_defaults()
        if ef is not None or "ef_search" not in knobs:
            knobs["ef_search"] = settings.resolve("ef_search", ef)
        if not qe:
            return [SearchHit.from_cosine(i, r.uri, s, r.width, r.height)
                    for i, s, r in self._nearest(vector, k, knobs, exclude)]
        query = np.asarray(vector, np.float32)[None]
        first = self._nearest(query[0], qe, knobs, exclude)
        stored = self.store.vectors([i for i, _, _ in first])
        used = [(i, s) for i, s, _ in first if i in stored]
        expanded = query
        if used:
            neighbours = np.stack([stored[i] for i, _ in used])
            sims = np.asarray([[s for _, s in used]], np.float32)
            alpha = settings.resolve("query_expansion_alpha")
            expanded = combine(query, neighbours, sims, np.arange(len(used))[None], alpha)
        nearest = self._nearest(expanded[0], k, knobs, exclude)
        stored.update(self.store.vectors([i for i, _, _ in nearest if i not in stored]))
        ranked = [(i, r) for i, _, r in nearest if i in stored]
        if not ranked:
            return []
        # The scores: cosines to the query itself, as the index holds the vectors (projected).
        live = self._indexes.live
        cosines = live.project(np.stack([stored[i] for i, _ in ranked])) @ live.project(query)[0]
        return [SearchHit.from_cosine(i, r.uri, float(c), r.width, r.height)
                for (i, r), c in zip(ranked, cosines, strict=True)]

    def _nearest(self, vector: np.ndarray, k: int, knobs: dict[str, Any],
                 exclude: set[int] | None) -> list[tuple[int, float, ImageRecord]]:
        """(id, cosine, record) of the ``k`` nearest active images, as the index ranks them."""
        fetch = k
        while True:
            scores, ids = self._indexes.live.search(vector[None, :], fetch, exclude=exclude,
                                                    **knobs)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
            records = self.store.get([i for i, _ in found])
            hits = [(i, s, records[i]) for i, s in found
                    if i in records and records[i].status == "active"]
            # Fewer hits than asked while the index had more: an image was removed after this
            # reader last caught up (e.g. during a compaction elsewhere). Look further.
            if len(hits) >= k or len(found) < fetch or fetch >= 16 * k:
                return hits[:k]
            fetch *= 4
