"""Searching a collection: the nearest images to an image, an indexed image or a vector,
ranked with α query expansion, within a slice of the collection (a filter on its fields, see
:mod:`.slices`), kept diverse and labelled (:mod:`.matches`). :class:`lookalike.Collection`
owns one :class:`Searcher`."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import settings
from ..errors import ImageNotFoundError, LookalikeError, UsageError
from ..imaging import MAX_FILE_BYTES, ImageSource, content_hash, read_bytes
from ..index.expansion import combine
from ..storage import Store
from ..thresholds import SAME_PIXELS_COSINE
from ..types import SearchHit
from ..where import Where, parse_max_per
from . import slices
from .indexes import Indexes
from .matches import Matcher, Ranked
from .slices import Plan, Slices

MAX_CANDIDATES = 1000  # hits looked through to fill k diverse ones
#: The query file's content hash, or a function computing it when a hit needs it.
QueryHash = str | Callable[[], str | None] | None


def _hash_of(image: ImageSource | Any) -> Callable[[], str | None]:
    """The content hash of a query given as bytes, a path or an ``s3://`` URI, read when first
    asked for (None for a PIL image, or a file that cannot be read again)."""

    @functools.cache
    def digest() -> str | None:
        if isinstance(image, bytes):
            return content_hash(image)
        if isinstance(image, str) or hasattr(image, "__fspath__"):
            try:
                return content_hash(read_bytes(image, MAX_FILE_BYTES))
            except LookalikeError:  # gone or changed since embedding: no claim
                return None
        return None

    return digest


@dataclass(frozen=True)
class Within:
    """What a search keeps: images passing ``where``, at most ``max_per`` (key, n) per value
    of a field, copies of a better hit folded into it (``collapse``)."""

    where: Where | None = None
    max_per: tuple[str, int] | None = None
    collapse: bool = False

    @classmethod
    def of(cls, where: str | Where | None = None, max_per: str | tuple[str, int] | None = None,
           collapse: bool = False) -> Within:
        return cls(Where.of(where), parse_max_per(max_per), bool(collapse))


class Searcher:
    """Searches over a collection's store and index, embedding queries with ``embed``."""

    def __init__(self, store: Store, indexes: Indexes,
                 embed: Callable[[list[Any]], np.ndarray], model: str) -> None:
        self.store = store
        self._indexes = indexes
        self._embed = embed
        self._slices: Slices | None = None
        self.matcher = Matcher(model)

    def search(self, image: ImageSource | Any, k: int = 10, *, ef: int | None = None,
               qe: int | None = None, within: Within = Within()) -> list[SearchHit]:
        """The ``k`` indexed images most similar to ``image`` (a path, file bytes or PIL image)."""
        return self.search_vector(self._embed([image])[0], k, ef=ef, qe=qe, within=within,
                                  query_hash=_hash_of(image))

    def search_similar(self, image_id: int, k: int = 10, *, ef: int | None = None,
                       qe: int | None = None, within: Within = Within()) -> list[SearchHit]:
        """Look-alikes of an indexed image, from its stored vector (the image itself excluded)."""
        vector = self.store.vector(image_id)
        record = self.store.get([image_id]).get(image_id)
        if vector is None or record is None or record.status != "active":
            raise ImageNotFoundError(f"No indexed image has id {image_id}.")
        return self.search_vector(vector, k, ef=ef, qe=qe, exclude={image_id}, within=within,
                                  query_hash=record.content_hash)

    def plan(self, where: str | Where) -> Plan:
        """How a search within ``where`` would run now (see :mod:`.slices`)."""
        parsed = Where.of(where)
        if parsed is None:
            raise UsageError("An empty filter: give an expression, such as `format = jpeg`.")
        return self._sliced().plan(parsed)

    def search_vector(self, vector: np.ndarray, k: int = 10, *, ef: int | None = None,
                      qe: int | None = None, exclude: set[int] | None = None,
                      within: Within = Within(), query_hash: QueryHash = None
                      ) -> list[SearchHit]:
        """The ``k`` images nearest to an embedding, ranked best first, each with its
        ``match`` label (``query_hash``: the query file's content hash, for ``exact``, or a
        function that computes it, called only if a hit is close enough to be that file).

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
        plan = self._sliced().plan(within.where) if within.where is not None else None
        query = np.asarray(vector, np.float32)[None]
        if qe:
            first = self._nearest(query[0], qe, knobs, exclude, within.where, plan)
            stored = self.store.vectors([h.image_id for h in first])
            used = [(h.image_id, h.score) for h in first if h.image_id in stored]
            if used:
                neighbours = np.stack([stored[i] for i, _ in used])
                sims = np.asarray([[s for _, s in used]], np.float32)
                alpha = settings.resolve("query_expansion_alpha")
                query = combine(query, neighbours, sims, np.arange(len(used))[None], alpha)
        diverse = within.collapse or within.max_per is not None
        fetch = min(MAX_CANDIDATES, 4 * k) if diverse else k
        while True:
            nearest = self._nearest(query[0], fetch, knobs, exclude, within.where, plan)
            hits = self._hits(vector, nearest, k, within, query_hash, rescore=bool(qe))
            if not diverse or len(hits) >= k or len(nearest) < fetch or \
                    fetch >= MAX_CANDIDATES:
                return hits
            fetch = min(MAX_CANDIDATES, 4 * fetch)

    def _hits(self, vector: np.ndarray, nearest: list[Ranked], k: int, within: Within,
              query_hash: QueryHash, *, rescore: bool) -> list[SearchHit]:
        """The hits to return from the ranked candidates: diversified, scored, labelled."""
        raw = self.store.vectors([h.image_id for h in nearest])  # the model's, unprojected
        nearest = [h for h in nearest if h.image_id in raw]
        if not nearest:
            return []
        fields = (self.store.fields([h.image_id for h in nearest], [within.max_per[0]])
                  if within.max_per is not None else {})
        kept = self.matcher.diversify(nearest, k, raw, collapse=within.collapse,
                                      max_per=within.max_per, fields=fields)
        query = np.asarray(vector, np.float32)
        live = self._indexes.live
        projected = live.project(query[None])[0] if rescore else query

        def hit(ranked: Ranked) -> SearchHit:
            r = ranked.record
            score = ranked.score
            if rescore:  # expanded: the score is still the similarity to the query itself
                score = float(live.project(raw[ranked.image_id][None])[0] @ projected)
            cosine = float(raw[ranked.image_id] @ query)
            # The same bytes embed alike: hash the query's file only for a hit that close.
            same = (cosine >= SAME_PIXELS_COSINE and r.content_hash is not None
                    and r.content_hash == (query_hash() if callable(query_hash) else query_hash))
            found = SearchHit.from_cosine(ranked.image_id, r.uri, score, r.width, r.height)
            match = self.matcher.label(cosine, same)
            return dataclasses.replace(found, match=match,
                                       copies=tuple(hit(c) for c in ranked.copies))

        return [hit(h) for h in kept]

    def _sliced(self) -> Slices:
        if self._slices is None:
            self._slices = Slices(self.store, self._indexes.live)
        return self._slices

    def _nearest(self, vector: np.ndarray, k: int, knobs: dict[str, Any],
                 exclude: set[int] | None, where: Where | None,
                 plan: Plan | None) -> list[Ranked]:
        """The ``k`` nearest active images passing ``where``, as the index ranks them."""
        if plan is not None and where is not None and plan.strategy == "post-filter":
            found = self._post_filtered(vector, k, knobs, exclude, where, plan)
            if found is not None:
                return found
            plan = self._sliced().pre_filter(where)  # far fewer pass than the sample said
        if plan is not None and plan.allowed is not None:
            if not len(plan.allowed):
                return []
            if plan.strategy == "pre-filter":  # a graph search finds 1 in 1/share: look wider
                wider = {**knobs, "ef_search": min(1024, max(
                    knobs.get("ef_search") or 0, math.ceil(k / max(plan.share, 1e-3))))}
                found = self._searched(vector, k, wider, exclude, allowed=plan.allowed)
                if len(found) >= min(k, len(plan.allowed) - len(exclude or ())):
                    return found
                # The graph ran out before k allowed images: compare them all instead.
            return self._searched(vector, k, knobs, exclude, allowed=plan.allowed, exact=True)
        return self._searched(vector, k, knobs, exclude)

    def _post_filtered(self, vector: np.ndarray, k: int, knobs: dict[str, Any],
                       exclude: set[int] | None, where: Where,
                       plan: Plan) -> list[Ranked] | None:
        """Search, then keep the hits that pass; None if too few pass to find k this way."""
        fetch = plan.fetch(k)
        while True:
            wider = {**knobs, "ef_search": max(knobs.get("ef_search") or 0, fetch)}
            scores, ids = self._indexes.live.search(vector[None, :], fetch, exclude=exclude,
                                                    **wider)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
            # The filter's fields first, then the rows of those that pass only (at a tenth
            # passing, rows for all 258 hits cost more than the search).
            fields = self.store.fields([i for i, _ in found], where.keys())
            hits = self._active([(i, s) for i, s in found if where.matches(fields.get(i, {}))])
            if len(hits) >= k or len(found) < fetch:
                return hits[:k]
            if fetch >= slices.MAX_FETCH:
                return None
            fetch = min(slices.MAX_FETCH, 4 * fetch)

    def _searched(self, vector: np.ndarray, k: int, knobs: dict[str, Any],
                  exclude: set[int] | None, **among: Any) -> list[Ranked]:
        """The ``k`` nearest active images (``among``: the index's ``allowed``/``exact``)."""
        fetch = k
        while True:
            scores, ids = self._indexes.live.search(vector[None, :], fetch, exclude=exclude,
                                                    **among, **knobs)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
            hits = self._active(found)
            # Fewer hits than asked while the index had more: an image was removed after this
            # reader last caught up (e.g. during a compaction elsewhere). Look further.
            if len(hits) >= k or len(found) < fetch or fetch >= 16 * k:
                return hits[:k]
            fetch *= 4

    def _active(self, found: list[tuple[int, float]]) -> list[Ranked]:
        """The (id, score) pairs whose images are active, with their rows."""
        records = self.store.get([i for i, _ in found])
        return [Ranked(i, s, records[i]) for i, s in found
                if i in records and records[i].status == "active"]
