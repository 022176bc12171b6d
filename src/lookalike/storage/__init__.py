"""Metadata stores: the contract every store keeps, and choosing one by URI.

:mod:`.sqlite` holds the embedded default (SQLite, ``lookalike.db`` in the collection
folder), :mod:`.records` the records every store speaks; :mod:`.postgres` keeps the same contract in
PostgreSQL. A collection's manifest records which (``"store"``, absent for SQLite), without any
password; ``tests/test_store_contract.py`` runs one suite against both.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import UsageError
from ..where import Value, Where
from .records import VERDICTS, Changes, Decision, EventWrite, ImageRecord, NewImage
from .sqlite import SQLiteStore
from .uri import SQLITE, PostgresURI, connection_uri, is_postgres, new_schema_name, redact

SQLITE_FILE = "lookalike.db"

__all__ = ["SQLITE_FILE", "VERDICTS", "Changes", "Decision", "EventWrite", "ImageRecord",
           "NewImage", "SQLiteStore", "Store", "new_store", "open_store"]


class Store(Protocol):
    """Images, their vectors and metadata. Ids are immutable primary keys; they are the ANN
    indexes' ids. A changed file gets a new row; the old one is marked ``removed`` (a tombstone
    while an index holds its vector). Safe to share between threads; writers take turns per
    transaction, and each write transaction is numbered by the next :meth:`generation`, which
    it stamps on every row it inserts or retires: readers catch up with :meth:`changes`."""

    dim: int

    def close(self) -> None: ...

    def file_states(self) -> dict[str, ImageRecord]:
        """Every live (active or failed) row by uri."""
        ...

    def get(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        """Rows by id, whatever their status; unknown ids are left out."""
        ...

    def find_uri(self, uri: str) -> ImageRecord | None:
        """The active row for ``uri``, if any."""
        ...

    def live_rows(self, uris: Sequence[str]) -> dict[str, ImageRecord]:
        """The live (active or failed) rows of ``uris`` that have one, by uri."""
        ...

    def vector(self, image_id: int) -> np.ndarray | None: ...

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors by id, whatever the image's status; ids without one are left out."""
        ...

    def metadata(self, image_id: int) -> str | None:
        """The JSON object stored with an image, as text."""
        ...

    def vector_by_hash(self, content_hash: str) -> np.ndarray | None: ...

    def generation(self) -> int:
        """The number of the last committed write transaction, whoever wrote: cheap enough to
        poll before every search. Transactions commit one at a time in this order."""
        ...

    def changes(self, after: int, upto: int, *, vectors: bool = True,
                chunk: int = 8192) -> Changes:
        """What the write transactions numbered (after, upto] did: images that became active
        (and their vectors, unless ``vectors`` is false) and images retired. Complete whatever
        order ids were handed out in: every row carries the generation that last changed it."""
        ...

    def max_id(self) -> int: ...

    def iter_vectors(
        self, *, after_id: int = 0, upto_id: int | None = None, active_only: bool = True,
        upto_generation: int | None = None, chunk: int = 8192,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) chunks of at most ``chunk``, in id order, ids in (after_id, upto_id],
        rows last changed by generation ``upto_generation`` or earlier."""
        ...

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` active vectors drawn uniformly without replacement (seeded: the same
        rows in every store), (m, dim) float32 in id order, from one consistent snapshot."""
        ...

    def fields(self, ids: Sequence[int], keys: Collection[str] | None = None
               ) -> dict[int, dict[str, list[Value]]]:
        """The fields of each of ``ids`` that has any (whatever its status: only active images
        have fields), keys sorted, each key's values sorted, numbers first (see .fields); only
        ``keys``, when given (what a filter reads, say)."""
        ...

    def matching(self, where: Where) -> np.ndarray:
        """Active image ids passing ``where``, ascending int64."""
        ...

    def count_matching(self, where: Where) -> int:
        """How many active images pass ``where``."""
        ...

    def facets(self, keys: Sequence[str], where: Where | None = None, *, top: int = 20
               ) -> dict[str, list[tuple[Value, int]]]:
        """For each key, its ``top`` most common values among active images passing ``where``,
        with how many images have each: count descending, then value (numbers first)."""
        ...

    def field_keys(self) -> list[tuple[str, int]]:
        """Every field key active images have, and how many have it; most common first."""
        ...

    def integrity_problems(self) -> list[str]:
        """Damage the database itself reports (a page that fails its checks), as sentences."""
        ...

    def tombstones(self) -> set[int]:
        """Ids that still have a stored vector but are no longer active."""
        ...

    def counts(self) -> dict[str, int]:
        """Rows by status: active, failed, removed."""
        ...

    def failures(self) -> list[ImageRecord]:
        """Live failed rows, by uri."""
        ...

    def same_bytes(self) -> list[list[int]]:
        """Active images that share a content hash, in groups of two or more, ids ascending."""
        ...

    def decisions(self) -> list[Decision]:
        """Every recorded verdict on a pair of images (by content hash), oldest first."""
        ...

    def decide(self, decisions: Iterable[Decision] = (),
               forget: Iterable[tuple[str, str]] = ()) -> None:
        """Record ``decisions`` (replacing earlier ones on the same pairs) and forget those on
        the pairs of hashes ``forget``, in one transaction."""
        ...

    def write(self, images: Iterable[NewImage]) -> list[int]:
        """Insert a batch in one transaction, retiring live rows with the same uri; new ids."""
        ...

    def set_metadata(self, image_id: int, metadata: str) -> None:
        """Replace the metadata (JSON object text) of an image, and so its fields."""
        ...

    def set_metadata_many(self, metadata: Mapping[int, str]) -> None:
        """Replace the metadata (JSON object text) of several images in one transaction."""
        ...

    def mark_removed(self, ids: Iterable[int]) -> int:
        """Retire rows that are not removed yet; how many were."""
        ...

    def retire(self, ids: Iterable[int]) -> list[int]:
        """Retire rows that are not removed yet, in one transaction; the ids that were, in
        ascending order. Of writers racing to retire one row, exactly one is told it did."""
        ...

    def drop_tombstoned_vectors(self, upto: int) -> int:
        """Delete the vectors of rows retired by generation ``upto`` or earlier."""
        ...

    def event_positions(self, uris: Sequence[str]) -> dict[str, str]:
        """The position of the newest stream event applied to each of ``uris`` that has one."""
        ...

    def apply_events(self, batch: EventWrite) -> tuple[list[int], list[int]]:
        """Do what a batch of stream events does, in one transaction (see :class:`EventWrite`);
        the new ids and the ids this call retired."""
        ...


def new_store(store: str, folder: Path, dim: int) -> str | None:
    """Prepare the metadata store of a new collection in ``folder`` and return what its manifest
    records: None for SQLite, else the URI with its schema and without its password."""
    if store == SQLITE:
        SQLiteStore(folder / SQLITE_FILE, dim, create=True).close()
        return None
    if not is_postgres(store):
        raise UsageError(
            f"Unknown store {redact(store)!r}: use sqlite (the default) or "
            "postgresql://user[:password]@host[:port]/database[?schema=name]."
        )
    from .postgres import PostgresStore

    uri = PostgresURI.parse(store)
    uri = uri if uri.schema else uri.with_schema(new_schema_name(folder))
    PostgresStore(uri, dim, create=True).close()
    return uri.recorded()


def open_store(recorded: str | None, *, folder: Path, dim: int, given: str | None = None,
               setting: str | None = None) -> Store:
    """Open a collection's store. ``recorded``: the manifest's (None: SQLite in ``folder``);
    ``given``: a URI passed explicitly, which may move it or carry the password; ``setting``:
    ``LOOKALIKE_STORE``, which only lends a password (see :func:`.uri.connection_uri`)."""
    if recorded is None:
        if given is not None and given != SQLITE:
            raise UsageError(
                f"{folder} keeps its metadata in {SQLITE_FILE} (SQLite); "
                f"--store {redact(given)!r} applies to new collections only."
            )
        return SQLiteStore(folder / SQLITE_FILE, dim)
    from .postgres import PostgresStore

    return PostgresStore(connection_uri(recorded, given, setting), dim)
