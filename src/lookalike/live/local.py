"""The live index: a large main index plus a small delta of recent additions, kept in step with
the store (the source of truth) and safe to share between threads and processes.

- New vectors go to the delta (exact, in memory, cached in ``delta.index``): searchable at once.
- Removed images are tombstones, skipped during the search, until a compaction drops them.
- A compaction builds a new main index from the stored vectors without stopping searches or
  writers, then swaps it in: ``main.index`` is replaced atomically (temporary file + rename).
- Before each search a reader compares the store's generation counter with the one it last saw
  and catches up: a new main index file, new rows, new tombstones.

Crash safety comes from the order of writes: rows are committed to the store before any index
file mentions them, index files are only ever replaced whole, and the delta is rebuilt from the
store whenever its cached file is behind, ahead or unreadable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError
from ..index import (
    PCA,
    FaissIndex,
    IndexSpec,
    VectorIndex,
    build_index,
    load_index,
    omp_threads,
)
from ..storage import Store
from .files import DELTA_INDEX, FLAT, MAIN_INDEX, file_stamp


@dataclass(frozen=True)
class CompactionPolicy:
    """When the delta or the tombstones are large enough that a compaction pays off."""

    delta_min: int = 5_000  # never compact for fewer new vectors than this
    delta_fraction: float = 0.25  # ... unless they are this fraction of the main index
    tombstone_fraction: float = 0.1


@dataclass(frozen=True)
class CompactionReport:
    main_vectors: int
    dropped_tombstones: int
    seconds: float
    spec: str


class _ReadWriteLock:
    """Many searches at once, or one change to the in-memory indexes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class LiveIndex:
    """Main + delta + tombstones over one collection folder and its store."""

    def __init__(self, folder: Path, spec: IndexSpec, dim: int, store: Store,
                 policy: CompactionPolicy | None = None, *, load: bool = True,
                 projection: PCA | None = None,
                 main_is_current: Callable[[], bool] = lambda: True) -> None:
        """``load=False`` ignores the index files on disk until the next refresh (for a rebuild,
        which must not read a damaged file).

        ``projection`` (a PCA) maps every stored vector and every query from the store's ``dim``
        to the index's; applied here, it cannot be forgotten on any path. ``main_is_current``
        says whether the main index file on disk was built with this projection (false while
        `lookalike reduce` is switching projections); it is asked before and after each load.
        """
        self.folder = folder
        self.spec = spec
        self.projection = projection
        self.dim = projection.dim if projection is not None else dim
        self.store = store
        self._main_is_current = main_is_current
        self._mismatched: tuple[int, int, int] | None = None  # a main file of another dim
        self.policy = policy or CompactionPolicy()
        self._lock = _ReadWriteLock()
        self._refresh_lock = threading.Lock()
        self._main: VectorIndex = build_index(spec, self.dim)
        self._main_stamp: tuple[int, int, int] | None = None
        self._delta = FaissIndex.build(FLAT, self.dim)
        self._tombstones: set[int] = set()
        self._generation = -1
        self.reload_in_background = False  # see refresh()
        if load:
            self.refresh(reload_main=True)

    # -- keeping up with the store ----------------------------------------------------------

    def refresh(self, *, reload_main: bool | None = None) -> None:
        """Catch up with other writers: a new main index file, new rows, new tombstones.

        With ``reload_main=False`` a new main index file is left for :meth:`reload_main` (a
        server calls it from a background thread) and searches go on with the old one, which
        stays correct: its removed images are tombstones, its missing ones are in the delta.
        """
        if reload_main is None:
            reload_main = not self.reload_in_background
        with self._refresh_lock:
            generation = self.store.generation()
            stamp = file_stamp(self.folder / MAIN_INDEX)
            new_main = reload_main and stamp != self._main_stamp
            if generation == self._generation and not new_main:
                return
            main: VectorIndex | None = self._main
            if new_main:
                main = self._load_main(stamp) if stamp else build_index(self.spec, self.dim)
                if main is None:  # not built with this projection (yet): keep the current one
                    main, new_main = self._main, False
                    if generation == self._generation:
                        return
            retired = self._catch_up(main, stamp if new_main else self._main_stamp, generation)
        del retired  # the old indexes, freed outside the lock

    def reload_main(self) -> bool:
        """Load a main index file that a compaction swapped in, while searches go on with the
        old one; then swap it in. Returns whether there was one."""
        stamp = file_stamp(self.folder / MAIN_INDEX)
        if stamp is None or stamp == self._main_stamp:
            return False
        main = self._load_main(stamp)  # slow: no lock held
        if main is None:
            return False
        with self._refresh_lock:
            if file_stamp(self.folder / MAIN_INDEX) != stamp:
                return False  # replaced again while loading: the next call takes the newest
            retired = self._catch_up(main, stamp, self.store.generation())
        del retired  # the old indexes, freed outside the lock
        return True

    def _load_main(self, stamp: tuple[int, int, int]) -> VectorIndex | None:
        """The main index file, or None while it may belong to another projection."""
        if stamp == self._mismatched or not self._main_is_current():
            return None
        main = load_index(self.folder / MAIN_INDEX, self.spec)
        if main.dim != self.dim:
            self._mismatched = stamp  # never searched with; the next compaction replaces it
            return None
        # Asked again after the load: a reduce that began meanwhile may have replaced the file.
        return main if self._main_is_current() else None

    def vectors(self, **where: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The store's active vectors as this index holds them (projected)."""
        for ids, vectors in self.store.iter_vectors(**where):
            yield ids, self.project(vectors)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Store vectors (n, store dim) as the index holds them (n, index dim)."""
        return vectors if self.projection is None else self.projection.apply(vectors)

    def _catch_up(self, main: VectorIndex, stamp: tuple[int, int, int] | None,
                  generation: int) -> tuple[VectorIndex, FaissIndex]:
        # The caller holds the refresh lock. Read everything first, then swap under the write
        # lock, so searches wait only for the swap. Returns the replaced indexes, for the caller
        # to free once it has released the refresh lock (freeing a large index takes a while).
        same_main = main is self._main
        delta = self._delta if same_main else self._load_delta(main.max_id())
        pending = list(self.vectors(after_id=max(main.max_id(), delta.max_id())))
        tombstones = self.store.tombstones()
        if same_main:
            # A compaction elsewhere drops the vectors of images removed before it began, so
            # they leave the store's tombstones while the old main index still holds them.
            tombstones |= self._tombstones
        retired = self._main, self._delta
        with self._lock.write():
            for ids, vectors in pending:
                delta.add(ids, vectors)
            self._main, self._main_stamp, self._delta = main, stamp, delta
            self._tombstones, self._generation = tombstones, generation
        return retired

    def _load_delta(self, main_max: int) -> FaissIndex:
        path = self.folder / DELTA_INDEX
        if path.is_file():
            try:
                delta = FaissIndex.load(path, FLAT)
            except CorruptCollectionError:
                delta = None  # a cache only: rebuilt from the store below
            if delta is not None and delta.dim == self.dim and (
                    delta.ntotal == 0 or int(delta.ids().min()) > main_max):
                return delta
        delta = FaissIndex.build(FLAT, self.dim)
        for ids, vectors in self.vectors(after_id=main_max):
            delta.add(ids, vectors)
        return delta

    # -- writing (the caller holds the collection's writer lock) -----------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Make vectors the caller has just committed to the store searchable."""
        with self._refresh_lock:
            # A search's refresh may have read this committed batch from the store already.
            known = max(self._main.max_id(), self._delta.max_id())
            fresh = ids > known
            if fresh.any():
                with self._lock.write():
                    self._delta.add(ids[fresh], self.project(vectors[fresh]))

    def forget(self, ids: set[int]) -> None:
        """Hide ids the caller has just marked removed in the store."""
        with self._lock.write():
            self._tombstones |= ids

    def save_delta(self) -> None:
        """Cache the delta on disk, so the next process need not rebuild it from the store."""
        # A compaction elsewhere may have swapped the main index meanwhile: the cached delta
        # must belong to the main index on disk. (Loading it first, outside the refresh lock,
        # keeps searches in other threads from waiting for the load.)
        self.reload_main()
        self.refresh(reload_main=True)
        with self._lock.read():
            self._delta.save(self.folder / DELTA_INDEX)

    # -- searching --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, exclude: set[int] | None = None,
               **knobs: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first over main and delta; -1 pads missing results.

        ``knobs`` are the per-call search parameters (``ef_search``, ``nprobe``, ...)."""
        self.refresh()
        queries = self.project(queries)
        with self._lock.read():
            banned = self._tombstones | exclude if exclude else self._tombstones
            parts = [index.search(queries, k, exclude=banned, **knobs)
                     for index in (self._main, self._delta) if index.ntotal]
        n = len(queries)
        if not parts:
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        scores = np.where(ids < 0, -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_scores = np.take_along_axis(scores, order, axis=1)
        top_ids = np.take_along_axis(ids, order, axis=1)
        if top_ids.shape[1] < k:
            pad = k - top_ids.shape[1]
            top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
        return top_scores, top_ids

    # -- state ------------------------------------------------------------------------------

    @property
    def main_vectors(self) -> int:
        return self._main.ntotal

    @property
    def delta_vectors(self) -> int:
        return self._delta.ntotal

    @property
    def main_kind(self) -> str:
        return self._main.spec.describe

    @property
    def tombstones(self) -> set[int]:
        return set(self._tombstones)

    def live_ids(self) -> np.ndarray:
        """Every searchable id, main then delta (a duplicate would show up twice)."""
        self.refresh()
        with self._lock.read():
            ids = np.concatenate([self._main.ids(), self._delta.ids()])
            banned = np.fromiter(self._tombstones, np.int64, count=len(self._tombstones))
        return ids[~np.isin(ids, banned)]

    def needs_compaction(self) -> bool:
        main, delta, policy = self._main.ntotal, self._delta.ntotal, self.policy
        total = main + delta
        if main == 0:
            return delta > 0  # a first run: build the main index right away
        if self._main.spec.kind != self.spec.for_size(total).kind:
            return True  # auto outgrew Flat, or a trainable spec has enough vectors now
        if delta >= max(policy.delta_min, policy.delta_fraction * main):
            return True
        return len(self._tombstones) > policy.tombstone_fraction * max(total, 1)

    # -- compaction -------------------------------------------------------------------------

    def compact(self) -> CompactionReport:
        """Build a new main index from the store's active vectors and swap it in.

        Searches go on against the old indexes during the build; vectors added meanwhile land
        in the delta (their ids are above the snapshot) and survive the swap. Callers make sure
        only one compaction runs at a time (the collection's compaction lock).
        """
        started, began_at = time.perf_counter(), time.time()
        upto = self.store.max_id()
        n = self.store.counts()["active"]
        # Leave a core to the searches that go on meanwhile (measured: with every core busy
        # building, search p99 on 2 cores grew 15x).
        with omp_threads(max(1, (os.cpu_count() or 1) - 1)):
            main = self._build_main(self.spec.for_size(n), upto, n)
        main.save(self.folder / MAIN_INDEX)
        stamp = file_stamp(self.folder / MAIN_INDEX)
        with self._refresh_lock:
            delta = FaissIndex.build(FLAT, self.dim)
            for ids, vectors in self.vectors(after_id=main.max_id()):
                delta.add(ids, vectors)
            with self._lock.write():
                self._main, self._main_stamp, self._delta = main, stamp, delta
            delta.save(self.folder / DELTA_INDEX)
        # Images removed before the build began are not in the new main: forget their vectors.
        dropped = self.store.drop_tombstoned_vectors(removed_before=began_at)
        with self._refresh_lock:
            tombstones = self.store.tombstones()
            with self._lock.write():
                self._tombstones = tombstones
        self.refresh()
        return CompactionReport(main.ntotal, dropped, time.perf_counter() - started,
                                main.spec.describe)

    def _build_main(self, spec: IndexSpec, upto: int, n: int) -> VectorIndex:
        if spec.kind == "scann":  # cannot grow: built from every vector at once
            chunks = list(self.vectors(upto_id=upto))
            ids = np.concatenate([c[0] for c in chunks]) if chunks else None
            vectors = np.concatenate([c[1] for c in chunks]) if chunks else None
            return build_index(spec, self.dim, ids, vectors)
        # Trainable kinds learn from a random sample, then take the vectors chunk by chunk.
        train = (self.project(self.store.sample_vectors(spec.train_size(n)))
                 if spec.trainable else None)
        main = build_index(spec, self.dim, train=train)
        for ids, vectors in self.vectors(upto_id=upto):
            main.add(ids, vectors)
        return main
