"""The live index when a Milvus collection holds the vectors (``milvus://`` and ``milvus-lite:``
index specs), with the surface of :class:`lookalike.live.LiveIndex`.

Milvus takes inserts and deletes itself and every process sees them at once, so there is no
delta, no main index file and no tombstone filter: adding inserts (ids are the store's),
removing deletes, searching asks Milvus with the per-call parameters. The store stays the
source of truth, and the order of writes is the same as with files: rows are committed to the
store before Milvus hears of them. A writer that dies in between is healed on the next open:
rows above Milvus's ``lookalike.synced`` mark are written, and removed images Milvus still
holds are deleted. ``compact`` resynchronises Milvus with the store; after a rebuild (``load=
False``) it rewrites every vector (on Milvus Lite into a new collection), and it recreates the
Milvus collection when the dimension (a `reduce`) or the index parameters (`set_index`) changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import CollectionExistsError, CorruptCollectionError
from ..index import PCA, IndexSpec
from ..index.milvus_index import MilvusIndex
from ..storage import Store
from .files import VerifyReport
from .local import CompactionPolicy, CompactionReport


class MilvusLiveIndex:
    """A Milvus collection kept in step with the store."""

    def __init__(self, folder: Path, spec: IndexSpec, dim: int, store: Store,
                 policy: CompactionPolicy | None = None, *, load: bool = True,
                 projection: PCA | None = None, token: str | None = None) -> None:
        """``load=False`` trusts nothing in Milvus until :meth:`compact` rewrites it (a
        rebuild). ``projection`` (a PCA) maps stored vectors and queries to the index's
        dimension, as in :class:`LiveIndex`. A relative Milvus Lite file is under ``folder``."""
        self.folder = folder
        self.spec = spec
        self.projection = projection
        self.dim = projection.dim if projection is not None else dim
        self.store = store
        self.policy = policy or CompactionPolicy()
        self.reload_in_background = False  # nothing to reload: kept for LiveIndex's surface
        self._index = MilvusIndex(spec, base=folder, token=token)
        self._refresh_lock = threading.Lock()
        self._generation = -1
        self._tombstones: set[int] = set()
        self._synced = 0  # every active id up to this is in Milvus
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
        lacks; on every store change, delete removed images Milvus may still hold."""
        del reload_main
        with self._refresh_lock:
            generation = self.store.generation()
            if generation == self._generation:
                return
            if not self._opened:
                self._open()
            tombstones = self.store.tombstones()
            fresh = tombstones - self._tombstones
            if fresh:  # removed elsewhere; deleted there already unless that process died
                self._index.delete(self._index.present(fresh))
            self._tombstones, self._generation = tombstones, generation

    def _open(self) -> None:
        if not self._index.exists():
            self._index.create(self.dim)
            self._recorded, self._synced = self._index.index_text, 0
        else:
            state = self._index.state()
            if state.dim != self.dim:
                raise CorruptCollectionError(
                    f"The Milvus collection {self._index.where} holds {state.dim}-d vectors, "
                    f"but this collection's index is {self.dim}-d. Run `lookalike rebuild` to "
                    "rebuild it from the stored vectors, or name another Milvus collection."
                )
            self._recorded, self._synced = state.index, state.synced
        upto = self.store.max_id()
        if upto > self._synced:  # committed rows a writer did not live to insert
            for ids, vectors in self.vectors(after_id=self._synced, upto_id=upto):
                self._index.add(ids, vectors)  # an upsert: a live writer may add them too
            self._set_synced(upto)
        self._opened = True

    def reload_main(self) -> bool:
        """Nothing to reload: Milvus serves every change at once."""
        return False

    def vectors(self, **where: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The store's active vectors as this index holds them (projected)."""
        for ids, vectors in self.store.iter_vectors(**where):
            yield ids, self.project(vectors)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Store vectors (n, store dim) as the index holds them (n, index dim)."""
        return vectors if self.projection is None else self.projection.apply(vectors)

    def _set_synced(self, upto: int) -> None:
        if upto > self._synced:
            self._index.set_synced(upto)
            self._synced = upto

    # -- writing (the caller holds the collection's writer lock) -----------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Make vectors the caller has just committed to the store searchable."""
        if not self._opened:
            self.refresh()
        fresh = ids > self._synced  # opening may have written this batch already
        if fresh.any():
            # Milvus Lite serves one process, so no reader can be healing this batch meanwhile:
            # a plain insert (faster there) cannot leave a duplicate.
            self._index.add(ids[fresh], self.project(vectors[fresh]),
                            replace=not self._index.is_lite)
            self._set_synced(int(ids.max()))

    def forget(self, ids: set[int]) -> None:
        """Delete ids the caller has just marked removed in the store."""
        self._index.delete(ids)
        self._tombstones |= ids

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
        """Removed images whose vectors the store keeps until the next compaction (Milvus has
        deleted them already)."""
        return set(self._tombstones)

    def live_ids(self) -> np.ndarray:
        """Every id Milvus holds."""
        self.refresh()
        return self._index.ids(self.store.max_id())

    def needs_compaction(self) -> bool:
        if self._opened and self._recorded != self._index.index_text:
            return True  # built with other index parameters (or not by lookalike)
        total = self.store.counts()["active"]
        return len(self._tombstones) > self.policy.tombstone_fraction * max(total, 1)

    # -- compaction -------------------------------------------------------------------------

    def compact(self) -> CompactionReport:
        """Bring Milvus in step with the store's active vectors: write the missing (after a
        rebuild, every one), delete the rest; recreate the Milvus collection if its dimension
        or index parameters differ. Then forget the removed images' vectors in the store.

        Searches go on meanwhile; callers make sure only one compaction runs at a time.
        """
        started, began_at = time.perf_counter(), time.time()
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
        for ids, vectors in self.vectors(upto_id=upto):
            active.append(ids)
            write = np.ones(len(ids), bool) if self._rewrite else ~np.isin(ids, held)
            if write.any():  # an upsert on a server: a live writer may add the same rows
                index.add(ids[write], vectors[write], replace=not index.is_lite)
        # Read after the writes: an image removed meanwhile is deleted again here.
        tombstones = self.store.tombstones()
        live = np.concatenate(active) if active else np.zeros(0, np.int64)
        stale = held[(held <= upto) & ~np.isin(held, live)]
        index.delete(set(stale.tolist()) | index.present(tombstones))
        index.flush()
        index.compact()
        with self._refresh_lock:
            self._recorded, self._opened, self._rewrite = index.index_text, True, False
            self._synced = max(self._synced, state.synced) if state is not None else 0
            self._set_synced(upto)
        dropped = self.store.drop_tombstoned_vectors(removed_before=began_at)
        with self._refresh_lock:
            self._tombstones, self._generation = self.store.tombstones(), -1
        self.refresh()
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
    problems: list[str] = []
    active = {int(i) for ids, _ in store.iter_vectors() for i in ids}
    stored = {int(i) for ids, _ in store.iter_vectors(active_only=False) for i in ids}
    index = MilvusIndex(spec, base=folder, token=token)
    try:
        held: set[int] = set()
        synced = 0
        if not index.exists():
            if active:
                problems.append(f"the Milvus collection {index.where} does not exist")
        else:
            state = index.state()
            synced = state.synced
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
    removed = (held & stored) - active
    if removed:
        problems.append(f"Milvus still holds {len(removed)} removed images "
                        f"(e.g. {sorted(removed)[:5]})")
    missing = {i for i in active if i <= synced} - held
    if missing:
        problems.append(f"{len(missing)} active images are missing from Milvus "
                        f"(e.g. {sorted(missing)[:5]})")
    pending = {i for i in active if i > synced} - held
    for ids, vectors in store.iter_vectors():
        bad = ids[np.abs(np.linalg.norm(vectors, axis=1) - 1.0) > 1e-3]
        if len(bad):
            problems.append(f"{len(bad)} stored vectors are not unit length "
                            f"(e.g. {bad[:5].tolist()})")
    return VerifyReport(
        active_images=len(active), main_vectors=len(held), delta_vectors=0,
        pending_vectors=len(pending), tombstones=len(stored - active), problems=tuple(problems),
    )
