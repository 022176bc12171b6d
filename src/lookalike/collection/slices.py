"""How a filtered search finds its images: a plan chosen by how many images pass the filter.

- **post-filter**: most images pass. The index is searched without the filter for more results
  than asked (k divided by the share that passes, with a margin), and the hits are checked
  against the filter from their stored fields; short of k, it fetches four times more.
- **pre-filter**: few pass. The store lists the images that do (its field indexes make that
  quick when they are few), and the index searches among those ids only (Faiss: a bitmap over
  its labels; Milvus and Qdrant: their own id filters), so k come back however rare they are.
- **exact**: so few pass that comparing the query with each of them costs less than a graph
  search would miss: every allowed vector is compared.

The share is measured on a random sample of the collection's fields, refreshed as it changes,
so a filter costs no count over the whole store; the plan only decides speed: each path returns
exactly the images that pass. Lists of passing ids are kept per store generation (any write,
metadata included, makes a new one), for repeated searches in one slice.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..live import LiveIndex
from ..storage import Store
from ..where import Where

Strategy = Literal["post-filter", "pre-filter", "exact"]

#: From this estimated share of images passing, search first and filter the hits after
#: (measured at 1M: at 10 %, listing the passing ids alone takes 33 ms; a whole search that
#: filters a graph search's 258 hits, 5 ms).
POST_FILTER_FROM = 0.05
#: Compare every allowed vector when there are at most this many multiply-adds to do (allowed
#: vectors × dimensions): measured on one core, 32M take about as long as an HNSW search.
EXACT_BUDGET = 32_000_000
MAX_FETCH = 4096  # hits a post-filter search looks through before asking the store instead
SAMPLE = 1000  # images whose fields estimate a filter's share
SAMPLE_SECONDS = 10.0  # a changed collection's sample is drawn again at most this often
CACHED_SLICES = 16
CACHED_SHARES = 1024


@dataclass(frozen=True)
class _Sample:
    generation: int
    drawn: float  # time.monotonic() when drawn
    total: int  # active images then
    fields: list[dict[str, list[str | float]]]
    shares: dict[str, float] = field(default_factory=dict)  # by expression, measured on it


@dataclass(frozen=True)
class Plan:
    """How one filtered search runs, and the share of images it expects to pass."""

    strategy: Strategy
    share: float
    allowed: np.ndarray | None = None  # pre-filter and exact: the ids that pass

    def fetch(self, k: int) -> int:
        """How many hits a post-filter search first asks for, to keep k."""
        # 2.5x the expected need: at a tenth passing, 258 hits hold 10 passing but once in
        # thousands (1.5x fell short and searched again for 4x more once in 20, at 1M).
        return min(MAX_FETCH, math.ceil(2.5 * k / max(self.share, 0.01)) + 8)


class Slices:
    """Plans filtered searches over one store and live index; safe to share between threads."""

    def __init__(self, store: Store, live: LiveIndex) -> None:
        self.store = store
        self.live = live
        self._lock = threading.Lock()
        self._sample: _Sample | None = None
        self._passing: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def plan(self, where: Where) -> Plan:
        """The plan for a search within ``where``."""
        share = self.share(where)
        if share >= POST_FILTER_FROM:
            return Plan("post-filter", share)
        return self.pre_filter(where)

    def pre_filter(self, where: Where) -> Plan:
        """A plan that searches among the ids the store says pass."""
        allowed = self.passing(where)
        share = len(allowed) / max(1, self._drawn().total)
        exact = len(allowed) * self.live.dim <= EXACT_BUDGET
        return Plan("exact" if exact else "pre-filter", share, allowed)

    def passing(self, where: Where) -> np.ndarray:
        """The active ids that pass ``where`` (ascending), kept per store generation."""
        key = (where.text, self.store.generation())
        with self._lock:
            found = self._passing.get(key)
            if found is not None:
                self._passing.move_to_end(key)
                return found
        found = self.store.matching(where)
        with self._lock:
            self._passing[key] = found
            while len(self._passing) > CACHED_SLICES:
                self._passing.popitem(last=False)
        return found

    def share(self, where: Where) -> float:
        """The share of images passing ``where`` in the sample (1.0 when there are none)."""
        sample = self._drawn()
        share = sample.shares.get(where.text)
        if share is None:
            passing = sum(where.matches(f) for f in sample.fields)
            share = passing / len(sample.fields) if sample.fields else 1.0
            if len(sample.shares) < CACHED_SHARES:
                sample.shares[where.text] = share
        return share

    def _drawn(self) -> _Sample:
        """A random sample of active images' fields, drawn again once the collection has
        changed and the last draw is SAMPLE_SECONDS old."""
        generation = self.store.generation()
        sample = self._sample
        if sample is not None and (sample.generation == generation
                                   or time.monotonic() - sample.drawn < SAMPLE_SECONDS):
            return sample
        ids = self.live.live_ids()
        chosen = (np.random.default_rng(generation).choice(ids, min(SAMPLE, len(ids)),
                                                           replace=False)
                  if len(ids) else ids)
        found = self.store.fields([int(i) for i in chosen])
        sample = _Sample(generation, time.monotonic(), len(ids),
                         [found.get(int(i), {}) for i in chosen])
        self._sample = sample
        return sample
