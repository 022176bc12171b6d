"""The live-index contract: what a collection asks of its vector index, whatever engine holds
the vectors, and the catch-up every implementation shares.

The store is the single source of truth. Every write transaction has a generation number, and
generations commit one at a time in increasing order (see :mod:`lookalike.storage`). A live
index remembers the generation it has applied (``seen``) and catches up by applying
``store.changes(seen, now)``: the images that became active since, and the ones retired. So its
contents are always a complete function of the store at some generation, whichever process
wrote, in whatever order ids were handed out. A writer commits to the store first and then
calls :meth:`LiveIndex.refresh`, which makes its own write searchable the same way a reader in
another process sees it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..index import IndexSpec, Projection
from ..storage import Changes, Store


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


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: counts, and every disagreement between the indexes and the store."""

    active_images: int
    main_vectors: int
    delta_vectors: int
    pending_vectors: int  # committed after the last index save; added on open (normal)
    tombstones: int
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


class LiveIndex(Protocol):
    """A collection's vector index kept in step with its store: what every caller uses."""

    spec: IndexSpec
    dim: int  # the index's dimension (the projection's, if any)
    reload_in_background: bool  # a server reloads a new main index in its upkeep thread

    def refresh(self, *, reload_main: bool | None = None) -> None:
        """Catch up with every write committed to the store, by any process."""
        ...

    def reload_main(self) -> bool:
        """Load a main index that a compaction elsewhere swapped in; whether there was one."""
        ...

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Store vectors as the index holds them (through the projection, if any)."""
        ...

    def vectors(self, *, upto_generation: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The store's active vectors as this index holds them, (ids, vectors) chunks."""
        ...

    def search(self, queries: np.ndarray, k: int, *, exclude: set[int] | None = None,
               allowed: np.ndarray | None = None, exact: bool = False,
               **knobs: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n, k), best first; -1 pads missing results. With ``allowed``
        (ids), only those come back, filtered inside the engine (a pre-filter); ``exact``
        asks it to compare the query with every allowed vector (for a small set)."""
        ...

    def save_delta(self) -> None:
        """Persist what a next process would otherwise rebuild from the store (the caller
        holds the collection's writer lock)."""
        ...

    def live_ids(self) -> np.ndarray:
        """Every searchable id (an id held twice shows up twice)."""
        ...

    def needs_compaction(self) -> bool: ...

    def compact(self) -> CompactionReport:
        """Rebuild the index from the store's active vectors (one compaction at a time)."""
        ...

    def close(self) -> None: ...

    @property
    def main_vectors(self) -> int: ...

    @property
    def delta_vectors(self) -> int: ...

    @property
    def main_kind(self) -> str: ...

    @property
    def tombstones(self) -> set[int]: ...


class FollowsStore(ABC):
    """The part every live index shares: the store, the projection, and the catch-up along
    generations. Subclasses apply a run of :class:`Changes` to their engine."""

    def __init__(self, spec: IndexSpec, dim: int, store: Store, policy: CompactionPolicy | None,
                 projection: Projection | None) -> None:
        self.spec = spec
        self.projection = projection
        self.dim = projection.dim if projection is not None else dim
        self.store = store
        self.policy = policy or CompactionPolicy()
        self.reload_in_background = False
        self._refresh_lock = threading.Lock()  # one catch-up (or swap) at a time
        self._seen = -1  # every change up to this generation is applied

    def changes(self, after: int, upto: int, *, vectors: bool = True) -> Changes:
        """The store's changes in generations (after, upto], vectors projected."""
        found = self.store.changes(after, upto, vectors=vectors)
        if found.vectors is None or self.projection is None:
            return found
        return Changes(found.ids, self.project(found.vectors), found.removed)

    def catch_up(self) -> None:
        """Apply whatever was committed since the generation last applied."""
        with self._refresh_lock:
            generation = self.store.generation()
            if generation != self._seen:
                self._apply(self.changes(self._seen, generation))
                self._seen = generation

    @abstractmethod
    def _apply(self, changes: Changes) -> None:
        """Make ``changes`` searchable (the caller holds the refresh lock)."""

    def vectors(self, *, upto_generation: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The store's active vectors as this index holds them (projected), in id order."""
        for ids, vectors in self.store.iter_vectors(upto_generation=upto_generation):
            yield ids, self.project(vectors)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Store vectors (n, store dim) as the index holds them (n, index dim)."""
        return vectors if self.projection is None else self.projection.apply(vectors)
