"""The live index when a vector database holds the vectors (Milvus: ``milvus://``,
``milvus-lite:``; Qdrant: ``qdrant://``, ``qdrant-edge:``), behind the contract of
:mod:`.contract`.

The database takes inserts and deletes itself and every process sees them at once, so there is
no delta, no main index file and no tombstone filter: catching up upserts the images that became
active and deletes the retired ones; searching asks the database with the per-call parameters.
The store stays the source of truth, and the order of writes is the same as with files: rows are
committed to the store before the database hears of them. The database records the store
generation it holds (``lookalike.generation``), always after the writes it stands for, so a
writer that dies in between is healed by the next process that catches up: it applies every
change after that generation. ``compact`` resynchronises the database with the store; after a
rebuild (``load=False``) it rewrites every vector (an embedded engine, which no other process
can be searching, into a new collection), and it recreates the collection when the dimension (a
`reduce`) or the index parameters (`set_index`) changed.

Each engine is a client for one collection that satisfies :class:`VectorDatabase`
(:mod:`lookalike.index.milvus_index`, :mod:`lookalike.index.qdrant_index`,
:mod:`lookalike.index.qdrant_edge`).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Protocol

import numpy as np

from ..errors import CollectionExistsError, CorruptCollectionError
from ..index import IndexSpec, Projection
from ..storage import Changes, Store
from .contract import CompactionPolicy, CompactionReport, FollowsStore, VerifyReport
from .files import check_vectors


class DatabaseState(Protocol):
    """What an existing collection in the database says about itself."""

    @property
    def dim(self) -> int: ...
    @property
    def index(self) -> str | None:
        """``lookalike.index``; None: not created by lookalike."""
    @property
    def generation(self) -> int | None:
        """``lookalike.generation``; None: written by a lookalike before generations."""
    @property
    def vectors(self) -> int: ...


class VectorDatabase(Protocol):
    """A client for one collection of a vector database, which may not exist yet."""

    engine: str  # "Milvus", "Qdrant": for messages
    where: str  # the spec's location part

    @property
    def embedded(self) -> bool:
        """Served from this process, which is then its only writer and reader."""
    @property
    def index_text(self) -> str:
        """The index parameters the spec builds, as ``lookalike.index`` records them."""
    def exists(self) -> bool: ...
    def state(self) -> DatabaseState: ...
    def create(self, dim: int) -> None: ...
    def drop(self) -> None: ...
    def set_generation(self, generation: int) -> None:
        """Record that every store change up to ``generation`` is in the collection (at once,
        or at the next :meth:`checkpoint`)."""
    def checkpoint(self) -> None:
        """Make what was written, and the generation recorded, durable."""
    def count(self) -> int: ...
    def ids(self, upto: int) -> np.ndarray:
        """Every id held, sorted (``upto``: the store's largest id)."""
    def add(self, ids: np.ndarray, vectors: np.ndarray, *, replace: bool = True) -> None: ...
    def delete(self, ids: Iterable[int]) -> None: ...
    def search(self, queries: np.ndarray, k: int, *, ef_search: int | None = None,
               nprobe: int | None = None, k_factor: int | None = None,
               leaves: int | None = None, exclude: Collection[int] = (),
               allowed: np.ndarray | None = None,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]: ...
    def flush(self) -> None: ...
    def compact(self) -> None: ...
    def close(self) -> None: ...


class DatabaseLiveIndex(FollowsStore):
    """A vector database's collection kept in step with the store."""

    def __init__(self, database: VectorDatabase, spec: IndexSpec, dim: int, store: Store,
                 policy: CompactionPolicy | None = None, *, load: bool = True,
                 projection: Projection | None = None) -> None:
        """``load=False`` trusts nothing in the database until :meth:`compact` rewrites it (a
        rebuild). ``projection`` (a PCA or a learned whitening) maps stored vectors and queries
        to the index's dimension. The live index closes ``database`` when it closes."""
        super().__init__(spec, dim, store, policy, projection)
        self._index = database
        self._tombstones: set[int] = set()
        self._marked = -1  # the generation the database says it holds
        self._recorded: str | None = None  # the index parameters it was built with
        self._opened = False
        self._rewrite = not load
        if load:
            self.refresh()

    def close(self) -> None:
        self._index.close()

    # -- keeping up with the store ----------------------------------------------------------

    def refresh(self, *, reload_main: bool | None = None) -> None:
        """On the first call, create the collection if it is missing and write what it lacks;
        then apply every change the store committed since."""
        del reload_main  # nothing to reload: the database serves every change at once
        if not self._opened:
            with self._refresh_lock:
                if not self._opened:
                    self._open()
        self.catch_up()

    def _open(self) -> None:
        if not self._index.exists():
            self._index.create(self.dim)
            self._recorded, self._seen = self._index.index_text, -1
        else:
            state = self._index.state()
            if state.dim != self.dim:
                engine = self._index.engine
                raise CorruptCollectionError(
                    f"The {engine} collection {self._index.where} holds {state.dim}-d vectors, "
                    f"but this collection's index is {self.dim}-d. Run `lookalike rebuild` to "
                    f"rebuild it from the stored vectors, or name another {engine} collection."
                )
            self._recorded = state.index
            self._seen = self._marked = -1 if state.generation is None else state.generation
            if state.generation is None:  # written before generations: add what it lacks
                generation = self.store.generation()
                self._apply(self.changes(-1, generation).without(
                    self._index.ids(self.store.max_id())))
                self._seen = generation
        self._opened = True

    def _apply(self, changes: Changes) -> None:
        if len(changes.ids) and changes.vectors is not None:
            # An upsert on a server: another process may be applying the same changes. An
            # embedded engine serves one process, where a plain insert (faster on Milvus Lite)
            # cannot duplicate.
            self._index.add(changes.ids, changes.vectors, replace=not self._index.embedded)
        if len(changes.removed):
            self._index.delete(set(changes.removed.tolist()))
            self._tombstones |= set(changes.removed.tolist())

    def catch_up(self) -> None:
        super().catch_up()
        if self._seen > self._marked:  # recorded after the writes: never ahead of them
            self._index.set_generation(self._seen)
            self._marked = self._seen

    def reload_main(self) -> bool:
        """Nothing to reload: the database serves every change at once."""
        return False

    def save_delta(self) -> None:
        """No delta to save: the database persists every insert and delete itself; an embedded
        engine records the generation it holds now (a server did at once)."""
        self._index.checkpoint()

    # -- searching --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, exclude: set[int] | None = None,
               allowed: np.ndarray | None = None, exact: bool = False,
               **knobs: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; -1 pads missing results. ``knobs`` are the
        per-call search parameters (``ef_search``, ``nprobe``); ``allowed`` becomes the
        engine's own filter on ids, which plans a filtered search itself."""
        self.refresh()
        return self._index.search(self.project(queries), k, exclude=exclude or (),
                                  allowed=allowed, exact=exact, **knobs)

    # -- state ------------------------------------------------------------------------------

    @property
    def main_vectors(self) -> int:
        return self._index.count()

    @property
    def delta_vectors(self) -> int:
        return 0

    @property
    def main_kind(self) -> str:
        built = self._recorded or self._index.index_text
        return f"{self._index.engine} {built.replace('&', ',')} at {self._index.where}"

    @property
    def tombstones(self) -> set[int]:
        """Images removed since this process opened (the database has deleted them already)."""
        return set(self._tombstones)

    def live_ids(self) -> np.ndarray:
        """Every id the database holds."""
        self.refresh()
        return self._index.ids(self.store.max_id())

    def needs_compaction(self) -> bool:
        if self._opened and self._recorded != self._index.index_text:
            return True  # built with other index parameters (or not by lookalike)
        total = self.store.counts()["active"]
        return len(self.store.tombstones()) > self.policy.tombstone_fraction * max(total, 1)

    # -- compaction -------------------------------------------------------------------------

    def compact(self) -> CompactionReport:
        """Bring the database in step with the store's active vectors: write the missing (after
        a rebuild, every one), delete the rest; recreate the collection if its dimension or
        index parameters differ. Then forget the removed images' vectors in the store.

        Searches go on meanwhile; callers make sure only one compaction runs at a time.
        """
        started = time.perf_counter()
        generation = self.store.generation()
        upto = self.store.max_id()
        index = self._index
        exists = index.exists()
        state = index.state() if exists else None
        # Another dimension (a reduce) or other index parameters (set_index) need a new
        # collection; so does a rebuild of an embedded engine, where inserting anew is faster
        # than rewriting in place and no other process can be searching. A server is rewritten
        # in place, so that searches elsewhere go on.
        mismatch = state is not None and (state.dim != self.dim
                                          or state.index != index.index_text)
        if state is not None and (mismatch or (self._rewrite and index.embedded)):
            if state.index is None:
                raise CollectionExistsError(
                    f"The {index.engine} collection {index.where} was not created by lookalike "
                    f"({state.vectors} vectors of dimension {state.dim}); not replacing it. "
                    "Name another collection in the index spec, or drop it yourself."
                )
            index.drop()
            state = None
        if state is None:
            index.create(self.dim)
        held = index.ids(upto) if state is not None else np.zeros(0, np.int64)
        active: list[np.ndarray] = []
        for ids, vectors in self.vectors(upto_generation=generation):
            active.append(ids)
            write = np.ones(len(ids), bool) if self._rewrite else ~np.isin(ids, held)
            if write.any():  # an upsert on a server: a live writer may add the same rows
                index.add(ids[write], vectors[write], replace=not index.embedded)
        live = np.concatenate(active) if active else np.zeros(0, np.int64)
        stale = held[~np.isin(held, live)]
        index.delete(set(stale.tolist()))  # images retired by then, and ids never stored
        index.flush()
        index.compact()
        with self._refresh_lock:
            self._recorded, self._opened, self._rewrite = index.index_text, True, False
            self._seen, self._tombstones = generation, set()
            index.set_generation(generation)
            index.checkpoint()
            self._marked = generation
        dropped = self.store.drop_tombstoned_vectors(generation)
        self.refresh()  # what was committed during the compaction
        return CompactionReport(self.main_vectors, dropped, time.perf_counter() - started,
                                f"{index.engine} {index.index_text}")


def claim_database(index: VectorDatabase, dim: int) -> None:
    """Create the collection a new lookalike collection will use; refuse one that exists (it
    belongs to another collection, or to something else). Closes ``index``."""
    try:
        if index.exists():
            state = index.state()
            raise CollectionExistsError(
                f"The {index.engine} collection {index.where} already exists ({state.vectors} "
                f"vectors of dimension {state.dim}). Name another one in the index spec, or "
                "drop it."
            )
        index.create(dim)
    finally:
        index.close()


def verify_database(index: VectorDatabase, dim: int, store: Store) -> VerifyReport:
    """Compare the database's collection with the store, without changing anything. Closes
    ``index``."""
    engine = index.engine
    problems = list(store.integrity_problems())
    active = check_vectors(store, problems)
    stored = {int(i) for ids, _ in store.iter_vectors(active_only=False) for i in ids}
    try:
        held: set[int] = set()
        generation: int | None = -1
        if not index.exists():
            if active:
                problems.append(f"the {engine} collection {index.where} does not exist")
        else:
            state = index.state()
            generation = state.generation
            if state.dim != dim:
                problems.append(f"the {engine} collection {index.where} has dimension "
                                f"{state.dim}, the collection {dim}")
            if state.index != index.index_text:
                problems.append(f"the {engine} collection {index.where} was built with "
                                f"{state.index or 'another tool'}, the spec says "
                                f"{index.index_text}")
            held = set(index.ids(store.max_id()).tolist())
    finally:
        index.close()
    unknown = held - stored
    if unknown:
        problems.append(f"{engine} holds {len(unknown)} ids with no stored vector "
                        f"(e.g. {sorted(unknown)[:5]})")
    # Removed images still held are a problem once the database says it holds their removal.
    retired = (held & stored) - active
    if generation is not None:
        retired -= set(store.changes(generation, store.generation(), vectors=False)
                       .removed.tolist())
    if retired:
        problems.append(f"{engine} still holds {len(retired)} removed images "
                        f"(e.g. {sorted(retired)[:5]})")
    expected = ({int(i) for ids, _ in store.iter_vectors(upto_generation=generation)
                 for i in ids} if generation is not None else set())
    missing = expected - held
    if missing:
        problems.append(f"{len(missing)} active images are missing from {engine} "
                        f"(e.g. {sorted(missing)[:5]}); run `lookalike rebuild`")
    return VerifyReport(
        active_images=len(active), main_vectors=len(held), delta_vectors=0,
        pending_vectors=len(active - held), tombstones=len(stored - active),
        problems=tuple(problems),
    )
