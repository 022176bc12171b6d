"""The live index over an in-process engine (Faiss, ScaNN): a large main index plus a small
delta of recent additions, kept in step with the store (the source of truth) and safe to share
between threads and processes.

- New vectors go to the delta (exact, in memory, cached in ``delta.index``): searchable at once.
- Removed images are tombstones, skipped during the search, until a compaction drops them.
- A compaction builds a new main index from the store at one generation without stopping
  searches or writers, then swaps it in: ``main.index`` is replaced atomically (temporary file +
  rename).
- Before each search a reader compares the store's generation with the one it has applied and
  catches up (:class:`.contract.FollowsStore`): a new main index file, new rows, new tombstones.

Crash safety comes from the order of writes: rows are committed to the store before any index
file mentions them, index files are only ever replaced whole and say which generation they hold
(:mod:`.files`), and whatever a file does not hold is read from the store.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError
from ..index import (
    FaissIndex,
    IndexSpec,
    Projection,
    VectorIndex,
    build_index,
    load_index,
    omp_threads,
)
from ..storage import Changes, Store
from .contract import CompactionPolicy, CompactionReport, FollowsStore
from .files import (
    DELTA_INDEX,
    FLAT,
    MAIN_INDEX,
    Generations,
    file_stamp,
    read_generations,
    save_index,
)


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


class MainDeltaIndex(FollowsStore):
    """Main + delta + tombstones over one collection folder and its store."""

    def __init__(self, folder: Path, spec: IndexSpec, dim: int, store: Store,
                 policy: CompactionPolicy | None = None, *, load: bool = True,
                 projection: Projection | None = None,
                 main_is_current: Callable[[], bool] = lambda: True) -> None:
        """``load=False`` ignores the index files on disk until the next refresh (for a rebuild,
        which must not read a damaged file).

        ``projection`` (a PCA or a learned whitening) maps every stored vector and every query
        from the store's ``dim`` to the index's; applied here, it cannot be forgotten on any
        path. ``main_is_current`` says whether the main index file on disk was built with this
        projection (false while `lookalike reduce` or `learn` is switching projections); it is
        asked before and after each load.
        """
        super().__init__(spec, dim, store, policy, projection)
        self.folder = folder
        self._main_is_current = main_is_current
        self._mismatched: tuple[int, int, int] | None = None  # a main file of another dim
        self._lock = _ReadWriteLock()
        self._main: VectorIndex = build_index(spec, self.dim)
        self._main_stamp: tuple[int, int, int] | None = None
        self._main_generation: int | None = -1  # None: a legacy file, generation unknown
        self._delta = FaissIndex.build(FLAT, self.dim)
        self._tombstones: set[int] = set()
        if load:
            self.refresh(reload_main=True)

    def close(self) -> None:
        """Nothing to release: the indexes are in memory."""

    # -- keeping up with the store ----------------------------------------------------------

    def refresh(self, *, reload_main: bool | None = None) -> None:
        """Catch up with other writers: a new main index file, new rows, new tombstones.

        With ``reload_main=False`` a new main index file is left for :meth:`reload_main` (a
        server calls it from a background thread) and searches go on with the old one, which
        stays correct: its removed images are tombstones, its missing ones are in the delta.
        """
        if reload_main is None:
            reload_main = not self.reload_in_background
        stamp = file_stamp(self.folder / MAIN_INDEX)
        if not (reload_main and stamp != self._main_stamp):
            self.catch_up()
            return
        retired = None
        with self._refresh_lock:
            if stamp is None:
                main: VectorIndex | None = build_index(self.spec, self.dim)
                held: int | None = -1
            else:
                main, held = self._load_main(stamp)
            if main is not None:
                retired = self._rebase(main, stamp, held)
        if main is None:  # not built with this projection (yet): keep the current one
            self.catch_up()
        del retired  # the old indexes, freed outside the lock

    def reload_main(self) -> bool:
        """Load a main index file that a compaction swapped in, while searches go on with the
        old one; then swap it in. Returns whether there was one."""
        stamp = file_stamp(self.folder / MAIN_INDEX)
        if stamp is None or stamp == self._main_stamp:
            return False
        main, held = self._load_main(stamp)  # slow: no lock held
        if main is None:
            return False
        with self._refresh_lock:
            if file_stamp(self.folder / MAIN_INDEX) != stamp:
                return False  # replaced again while loading: the next call takes the newest
            retired = self._rebase(main, stamp, held)
        del retired  # the old indexes, freed outside the lock
        return True

    def _load_main(self, stamp: tuple[int, int, int]) -> tuple[VectorIndex | None, int | None]:
        """The main index file and its generation, or (None, None) while it may belong to
        another projection."""
        if stamp == self._mismatched or not self._main_is_current():
            return None, None
        path = self.folder / MAIN_INDEX
        held = read_generations(path)
        main = load_index(path, self.spec)
        if main.dim != self.dim:
            self._mismatched = stamp  # never searched with; the next compaction replaces it
            return None, None
        # Asked again after the load: a reduce that began meanwhile may have replaced the file,
        # and a footer read from one file must not describe another (a compaction's rename).
        if not self._main_is_current() or file_stamp(path) != stamp:
            return None, None
        return main, held.base if held else None

    def _rebase(self, main: VectorIndex, stamp: tuple[int, int, int] | None,
                held: int | None) -> tuple[VectorIndex, FaissIndex]:
        """Swap in ``main`` (holding the store at generation ``held``; None: unknown) with a
        delta and tombstones that bring it up to the store's generation now. The caller holds
        the refresh lock; it frees the returned old indexes once it has released it (freeing a
        large index takes a while)."""
        generation = self.store.generation()
        base = -1 if held is None else held
        delta, delta_seen = self._load_delta(base) if held is not None else (None, base)
        if delta is None:
            delta, delta_seen = FaissIndex.build(FLAT, self.dim), base
        tombstones = set(self.changes(base, delta_seen, vectors=False).removed.tolist())
        pending = self.changes(delta_seen, generation)
        if held is None:  # a legacy main file: skip what it holds already
            pending = pending.without(main.ids())
        self._add(delta, pending)
        tombstones |= set(pending.removed.tolist())
        retired = self._main, self._delta
        with self._lock.write():
            self._main, self._main_stamp, self._main_generation = main, stamp, held
            self._delta, self._tombstones, self._seen = delta, tombstones, generation
        return retired

    def _load_delta(self, base: int) -> tuple[FaissIndex | None, int]:
        """The cached delta if it sits on the main index of generation ``base``."""
        path = self.folder / DELTA_INDEX
        held = read_generations(path)
        if held is None or held.base != base or held.generation > self.store.generation():
            return None, base  # another main's, or a store restored from an older backup
        try:
            delta = FaissIndex.load(path, FLAT)
        except CorruptCollectionError:
            return None, base  # a cache only: rebuilt from the store
        return (delta, held.generation) if delta.dim == self.dim else (None, base)

    def _apply(self, changes: Changes) -> None:
        if changes:
            with self._lock.write():
                self._add(self._delta, changes)
                self._tombstones |= set(changes.removed.tolist())

    @staticmethod
    def _add(delta: FaissIndex, changes: Changes) -> None:
        if len(changes.ids) and changes.vectors is not None:
            delta.add(changes.ids, changes.vectors)

    # -- writing (the caller holds the collection's writer lock) -----------------------------

    def save_delta(self) -> None:
        """Cache the delta on disk, so the next process need not rebuild it from the store."""
        # A compaction elsewhere may have swapped the main index meanwhile: the cached delta
        # must belong to the main index on disk. (Loading it first, outside the refresh lock,
        # keeps searches in other threads from waiting for the load.)
        self.reload_main()
        self.refresh(reload_main=True)
        with self._refresh_lock, self._lock.read():
            if self._main_generation is not None:  # a legacy main: the next compaction fixes
                save_index(self._delta, self.folder / DELTA_INDEX,
                           Generations(self._seen, self._main_generation))

    # -- searching --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, exclude: set[int] | None = None,
               allowed: np.ndarray | None = None, exact: bool = False,
               **knobs: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first over main and delta; -1 pads missing results.

        ``knobs`` are the per-call search parameters (``ef_search``, ``nprobe``, ...);
        ``allowed`` and ``exact`` as :meth:`LiveIndex.search` says."""
        self.refresh()
        queries = self.project(queries)
        with self._lock.read():
            banned = self._tombstones | exclude if exclude else self._tombstones
            parts = [index.search(queries, k, exclude=banned, allowed=allowed, exact=exact,
                                  **knobs)
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
        if self._main_generation is None:
            return True  # written before index files named their generation: rewrite it once
        if self._main.spec.kind != self.spec.for_size(total).kind:
            return True  # auto outgrew Flat, or a trainable spec has enough vectors now
        if delta >= max(policy.delta_min, policy.delta_fraction * main):
            return True
        return len(self._tombstones) > policy.tombstone_fraction * max(total, 1)

    # -- compaction -------------------------------------------------------------------------

    def compact(self) -> CompactionReport:
        """Build a new main index from the store's active vectors at its current generation and
        swap it in.

        Searches go on against the old indexes during the build; what is committed meanwhile is
        caught up with from the store after the swap. Callers make sure only one compaction
        runs at a time (the collection's compaction lock).
        """
        started = time.perf_counter()
        generation = self.store.generation()
        n = self.store.counts()["active"]
        # Leave a core to the searches that go on meanwhile (measured: with every core busy
        # building, search p99 on 2 cores grew 15x).
        with omp_threads(max(1, (os.cpu_count() or 1) - 1)):
            main = self._build_main(self.spec.for_size(n), generation, n)
        save_index(main, self.folder / MAIN_INDEX, Generations(generation, generation))
        stamp = file_stamp(self.folder / MAIN_INDEX)
        with self._refresh_lock:
            retired = self._rebase(main, stamp, generation)
            with self._lock.read():
                save_index(self._delta, self.folder / DELTA_INDEX,
                           Generations(self._seen, generation))
        del retired
        # Images retired by then are not in the new main: forget their vectors.
        dropped = self.store.drop_tombstoned_vectors(generation)
        self.refresh()
        return CompactionReport(main.ntotal, dropped, time.perf_counter() - started,
                                main.spec.describe)

    def _build_main(self, spec: IndexSpec, generation: int, n: int) -> VectorIndex:
        if spec.kind == "scann":  # cannot grow: built from every vector at once
            chunks = list(self.vectors(upto_generation=generation))
            ids = np.concatenate([c[0] for c in chunks]) if chunks else None
            vectors = np.concatenate([c[1] for c in chunks]) if chunks else None
            return build_index(spec, self.dim, ids, vectors)
        # Trainable kinds learn from a random sample, then take the vectors chunk by chunk.
        train = (self.project(self.store.sample_vectors(spec.train_size(n)))
                 if spec.trainable else None)
        main = build_index(spec, self.dim, train=train)
        for ids, vectors in self.vectors(upto_generation=generation):
            main.add(ids, vectors)
        return main
