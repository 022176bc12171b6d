"""The live index when a Milvus collection holds the vectors (``milvus://`` and ``milvus-lite:``
index specs), behind the contract of :mod:`.contract`.

Milvus takes inserts and deletes itself and every process sees them at once, so there is no
delta, no main index file and no tombstone filter: catching up upserts the images that became
active and deletes the retired ones; searching asks Milvus with the per-call parameters. The
store stays the source of truth, and the order of writes is the same as with files: rows are
committed to the store before Milvus hears of them. Milvus records the store generation it holds
(``lookalike.generation``), so a writer that dies in between is healed by the next process that
catches up: it applies every change after that generation. ``compact`` resynchronises Milvus
with the store; after a rebuild (``load=False``) it rewrites every vector (on Milvus Lite into a
new collection), and it recreates the Milvus collection when the dimension (a `reduce`) or the
index parameters (`set_index`) changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import CollectionExistsError, CorruptCollectionError
from ..index import PCA, IndexSpec
from ..index.milvus_index import MilvusIndex
from ..storage import Changes, Store
from .contract import CompactionPolicy, CompactionReport, FollowsStore, VerifyReport
from .files import check_vectors


class MilvusLiveIndex(FollowsStore):
    """A Milvus collection kept in step with the store."""

    def __init__(self, folder: Path, spec: IndexSpec, dim: int, store: Store,
                 policy: CompactionPolicy | None = None, *, load: bool = True,
                 projection: PCA | None = None, token: str | None = None) -> None:
        """``load=False`` trusts nothing in Milvus until :meth:`compact` rewrites it (a
        rebuild). ``projection`` (a PCA) maps stored vectors and queries to the index's
        dimension. A relative Milvus Lite file is under ``folder``."""
        super().__init__(spec, dim, store, policy, projection)
        self.folder = folder
        self._index = MilvusIndex(spec, base=folder, token=token)
        self._tombstones: set[int] = set()
        self._marked = -1  # the generation Milvus says it holds
        self._recorded: str | None = None  # the index parameters Milvus was built with
        self._opened = False
        self._rewrite = not load
        if load:
            self.refresh()

    def close(self) -> None:
        self._index.close()

    # -- keeping up with the store ----------------------------------------------------------

    def refresh(self, *, reload_main: bool | None = None) -> None:
        """On the first call, create the Milvus collection if it is missing and write what it
        lacks; then apply every change the store committed since."""
        del reload_main  # nothing to reload: Milvus serves every change at once
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
                raise CorruptCollectionError(
                    f"The Milvus collection {self._index.where} holds {state.dim}-d vectors, "
                    f"but this collection's index is {self.dim}-d. Run `lookalike rebuild` to "
                    "rebuild it from the stored vectors, or name another Milvus collection."
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
            # An upsert on a server: another process may be applying the same changes. Milvus
            # Lite serves one process, where a plain insert (faster there) cannot duplicate.
            self._index.add(changes.ids, changes.vectors, replace=not self._index.is_lite)
        if len(changes.removed):
            self._index.delete(set(changes.removed.tolist()))
            self._tombstones |= set(changes.removed.tolist())

    def catch_up(self) -> None:
        super().catch_up()
        if self._seen > self._marked:  # recorded after the writes: never ahead of them
            self._index.set_generation(self._seen)
            self._marked = self._seen

    def reload_main(self) -> bool:
        """Nothing to reload: Milvus serves every change at once."""
        return False

    def save_delta(self) -> None:
        """Nothing to save: Milvus persists every insert and delete itself."""

    # -- searching --------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, exclude: set[int] | None = None,
               **knobs: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; -1 pads missing results. ``knobs`` are the
        per-call search parameters (``ef_search``, ``nprobe``)."""
        self.refresh()
        return self._index.search(self.project(queries), k, exclude=exclude or (), **knobs)

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
        return f"Milvus {built.replace('&', ',')} at {self._index.where}"

    @property
    def tombstones(self) -> set[int]:
        """Images removed since this process opened (Milvus has deleted them already)."""
        return set(self._tombstones)

    def live_ids(self) -> np.ndarray:
        """Every id Milvus holds."""
        self.refresh()
        return self._index.ids(self.store.max_id())

    def needs_compaction(self) -> bool:
        if self._opened and self._recorded != self._index.index_text:
            return True  # built with other index parameters (or not by lookalike)
        total = self.store.counts()["active"]
        return len(self.store.tombstones()) > self.policy.tombstone_fraction * max(total, 1)

    # -- compaction -------------------------------------------------------------------------

    def compact(self) -> CompactionReport:
        """Bring Milvus in step with the store's active vectors: write the missing (after a
        rebuild, every one), delete the rest; recreate the Milvus collection if its dimension
        or index parameters differ. Then forget the removed images' vectors in the store.

        Searches go on meanwhile; callers make sure only one compaction runs at a time.
        """
        started = time.perf_counter()
        generation = self.store.generation()
        upto = self.store.max_id()
        index = self._index
        exists = index.exists()
        state = index.state() if exists else None
        # Another dimension (a reduce) or other index parameters (set_index) need a new
        # collection; so does a rebuild on Milvus Lite, where inserting anew is faster than
        # rewriting in place and no other process can be searching. A server is rewritten in
        # place, so that searches elsewhere go on.
        mismatch = state is not None and (state.dim != self.dim
                                          or state.index != index.index_text)
        if state is not None and (mismatch or (self._rewrite and index.is_lite)):
            if state.index is None:
                raise CollectionExistsError(
                    f"The Milvus collection {index.where} was not created by lookalike "
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
                index.add(ids[write], vectors[write], replace=not index.is_lite)
        live = np.concatenate(active) if active else np.zeros(0, np.int64)
        stale = held[~np.isin(held, live)]
        index.delete(set(stale.tolist()))  # images retired by then, and ids never stored
        index.flush()
        index.compact()
        with self._refresh_lock:
            self._recorded, self._opened, self._rewrite = index.index_text, True, False
            self._seen, self._tombstones = generation, set()
            index.set_generation(generation)
            self._marked = generation
        dropped = self.store.drop_tombstoned_vectors(generation)
        self.refresh()  # what was committed during the compaction
        return CompactionReport(self.main_vectors, dropped, time.perf_counter() - started,
                                f"Milvus {index.index_text}")


def claim_milvus(spec: IndexSpec, folder: Path, dim: int, token: str | None = None) -> None:
    """Create the Milvus collection a new lookalike collection will use; refuse one that exists
    (it belongs to another collection, or to something else)."""
    index = MilvusIndex(spec, base=folder, token=token)
    try:
        if index.exists():
            state = index.state()
            raise CollectionExistsError(
                f"The Milvus collection {index.where} already exists ({state.vectors} vectors "
                f"of dimension {state.dim}). Name another one in the index spec, or drop it."
            )
        index.create(dim)
    finally:
        index.close()


def verify_milvus(spec: IndexSpec, folder: Path, dim: int, store: Store,
                  token: str | None = None) -> VerifyReport:
    """Compare the Milvus collection with the store, without changing anything."""
    problems = list(store.integrity_problems())
    active = check_vectors(store, problems)
    stored = {int(i) for ids, _ in store.iter_vectors(active_only=False) for i in ids}
    index = MilvusIndex(spec, base=folder, token=token)
    try:
        held: set[int] = set()
        generation: int | None = -1
        if not index.exists():
            if active:
                problems.append(f"the Milvus collection {index.where} does not exist")
        else:
            state = index.state()
            generation = state.generation
            if state.dim != dim:
                problems.append(f"the Milvus collection {index.where} has dimension "
                                f"{state.dim}, the collection {dim}")
            if state.index != index.index_text:
                problems.append(f"the Milvus collection {index.where} was built with "
                                f"{state.index or 'another tool'}, the spec says "
                                f"{index.index_text}")
            held = set(index.ids(store.max_id()).tolist())
    finally:
        index.close()
    unknown = held - stored
    if unknown:
        problems.append(f"Milvus holds {len(unknown)} ids with no stored vector "
                        f"(e.g. {sorted(unknown)[:5]})")
    # Removed images Milvus still holds are a problem once Milvus says it holds their removal.
    retired = (held & stored) - active
    if generation is not None:
        retired -= set(store.changes(generation, store.generation(), vectors=False)
                       .removed.tolist())
    if retired:
        problems.append(f"Milvus still holds {len(retired)} removed images "
                        f"(e.g. {sorted(retired)[:5]})")
    expected = ({int(i) for ids, _ in store.iter_vectors(upto_generation=generation)
                 for i in ids} if generation is not None else set())
    missing = expected - held
    if missing:
        problems.append(f"{len(missing)} active images are missing from Milvus "
                        f"(e.g. {sorted(missing)[:5]}); run `lookalike rebuild`")
    return VerifyReport(
        active_images=len(active), main_vectors=len(held), delta_vectors=0,
        pending_vectors=len(active - held), tombstones=len(stored - active),
        problems=tuple(problems),
    )
