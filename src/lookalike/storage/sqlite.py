"""The metadata store: SQLite (WAL), one row per image version, vectors as the source of truth.

A changed file gets a new row (and id); the old row is marked ``removed``. Ids are therefore
immutable and map one-to-one to vectors, which is what lets an append-only ANN index use them.
Every index can be rebuilt from the ``vectors`` table.

Every write transaction takes the next ``generation`` number and stamps it on each row it
inserts or retires (``images.seq``). Transactions commit one at a time, in generation order, so
"the rows stamped after generation G" is exactly what changed since a reader saw G, whatever
order ids were handed out in: that is how every live index catches up (see :meth:`changes`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCollectionError, DiskWriteError
from ..where import Value, Where
from . import sqlite_fields
from .fields import Fields
from .filtering import FieldQueries
from .records import (
    Changes,
    Decision,
    EventWrite,
    ImageRecord,
    NewImage,
    loaded_uri,
    storable,
    storable_ids,
    stored_uri,
    vector_chunks,
)
from .sqlite_file import (
    IN_CHUNK,
    Transaction,
    disk_failed,
    disk_full,
    insert_rows,
    migrate,
    retire_rows,
)

_COLUMNS = ("id, uri, size, mtime_ns, content_hash, width, height, status, error, added_at, "
            "etag")


class SQLiteStore:
    """Metadata and vectors in one SQLite file. One writer at a time; readers never block."""

    def __init__(self, path: Path, dim: int, *, create: bool = False) -> None:
        """Open the database at ``path``; ``create``: for a new collection (else a missing or
        empty file is an error: SQLite would silently start an empty one)."""
        if not create and (not path.is_file() or path.stat().st_size == 0):
            state = "empty" if path.is_file() else "missing"
            raise CorruptCollectionError(
                f"The metadata database {path} is {state}, but {path.parent} holds a "
                "collection: its images and vectors live in that file. Restore it from a "
                "backup (with its -wal file, if any); `lookalike rebuild` cannot recreate it."
            )
        self.path = path
        self.dim = dim
        # On a read-only disk or folder, SQLite can neither take WAL locks nor make the -shm
        # file: open the file read-only, and unless a -wal file holds commits (a read-only
        # open then uses it), as immutable: no locks, nothing written.
        self.read_only = not create and not (os.access(path, os.W_OK)
                                             and os.access(path.parent, os.W_OK))
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            migrate(self._db, None if self.read_only else path)
        except sqlite3.DatabaseError as exc:
            self.close()
            if isinstance(exc, sqlite3.OperationalError) and disk_failed(exc) and disk_full(path):
                raise DiskWriteError(
                    f"Cannot open {path}: even a read needs a few KB on its disk (SQLite's "
                    f"shared-memory file, {path.name}-shm), and the disk is full. Free some space "
                    "and run the command again; nothing is lost.") from None
            raise CorruptCollectionError(f"Metadata database {path} is unreadable: {exc}") from None

    @property
    def _db(self) -> sqlite3.Connection:
        # One connection per thread: a reader thread never sees another thread's open
        # transaction, and each write transaction is its own.
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            wal = self.path.with_name(self.path.name + "-wal")
            mode = "mode=ro" if wal.is_file() and wal.stat().st_size else "immutable=1"
            return sqlite3.connect(f"{self.path.absolute().as_uri()}?{mode}", uri=True,
                                   timeout=30.0, isolation_level=None, check_same_thread=False)
        db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed write survives an OS crash or power cut, not only a killed process.
        db.execute("PRAGMA synchronous=FULL")
        return db

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # -- reading ---------------------------------------------------------------------------

    def file_states(self) -> dict[str, ImageRecord]:
        """Every live (active or failed) row by uri: what an indexing run compares files with."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM images WHERE status != 'removed'")
        return {r.uri: r for r in map(ImageRecord.from_row, rows)}

    def get(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        rows = self._by_ids(f"SELECT {_COLUMNS} FROM images WHERE id IN ", ids)
        return {row[0]: ImageRecord.from_row(row) for row in rows}

    def _by_ids(self, query: str, ids: Sequence[int]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``query`` + ``(?, ?, ...)`` for ``ids``, 500 ids per statement."""
        wanted = storable_ids(ids)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            yield from self._db.execute(query + f"({','.join('?' * len(chunk))})", chunk)

    def find_uri(self, uri: str) -> ImageRecord | None:
        # "status != 'removed'" lets SQLite use the partial unique index on live uris.
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM images WHERE uri = ? AND status != 'removed'",
            (stored_uri(uri),)
        ).fetchone()
        record = ImageRecord.from_row(row) if row else None
        return record if record and record.status == "active" else None

    def live_rows(self, uris: Sequence[str]) -> dict[str, ImageRecord]:
        found: dict[str, ImageRecord] = {}
        wanted = [stored_uri(u) for u in uris]
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[start:start + IN_CHUNK]
            found.update((r.uri, r) for r in map(ImageRecord.from_row, self._db.execute(
                f"SELECT {_COLUMNS} FROM images WHERE status != 'removed' AND uri IN "
                f"({','.join('?' * len(chunk))})", chunk)))
        return found

    def vector(self, image_id: int) -> np.ndarray | None:
        if not storable(image_id):
            return None
        row = self._db.execute(
            "SELECT vector FROM vectors WHERE image_id = ?", (image_id,)
        ).fetchone()
        return self._decode(row[0]) if row else None

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        rows = self._by_ids("SELECT image_id, vector FROM vectors WHERE image_id IN ", ids)
        return {image_id: self._decode(blob) for image_id, blob in rows}

    def metadata(self, image_id: int) -> str | None:
        """The JSON metadata stored with an image, if any."""
        if not storable(image_id):
            return None
        row = self._db.execute(
            "SELECT json FROM metadata WHERE image_id = ?", (image_id,)
        ).fetchone()
        return row[0] if row else None

    def vector_by_hash(self, content_hash: str) -> np.ndarray | None:
        """A stored vector for identical bytes, so a renamed or copied file is not re-embedded."""
        row = self._db.execute(
            "SELECT v.vector FROM images i JOIN vectors v ON v.image_id = i.id "
            "WHERE i.content_hash = ? LIMIT 1", (content_hash,)
        ).fetchone()
        return self._decode(row[0]) if row else None

    def generation(self) -> int:
        """A counter every write bumps: readers compare it to know when to catch up."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def max_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM images").fetchone()
        return int(row[0] or 0)

    def iter_vectors(
        self, *, after_id: int = 0, upto_id: int | None = None, active_only: bool = True,
        upto_generation: int | None = None, chunk: int = 8192,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) chunks in id order, ids in (after_id, upto_id], stamped by generation
        ``upto_generation`` or earlier: the source from which any index is rebuilt."""
        status = "AND i.status = 'active'" if active_only else ""
        upto = (1 << 62) if upto_id is None else upto_id
        until = (1 << 62) if upto_generation is None else upto_generation
        query = ("SELECT v.image_id, v.vector FROM vectors v JOIN images i ON i.id = v.image_id "
                 f"WHERE v.image_id > ? AND v.image_id <= ? AND i.seq <= ? {status} "
                 "ORDER BY v.image_id LIMIT ?")
        return vector_chunks(
            lambda last: self._db.execute(query, (last, upto, until, chunk)).fetchall(),
            after_id, self.dim)

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` active vectors drawn uniformly without replacement (seeded: the same rows
        as every store draws), (m, dim) float32 in id order, from one consistent snapshot: what
        a projection or a trained index learns from."""
        # The ids come from the small images rows (every active image has a vector), the vectors
        # by primary key: at 1M images this reads the sample, never every vector.
        db = self._db
        db.execute("BEGIN")  # a read snapshot (WAL): the ids and vectors agree
        try:
            ids = np.fromiter((r[0] for r in db.execute(
                "SELECT id FROM images WHERE status = 'active' ORDER BY id")), dtype=np.int64)
            if n < len(ids):
                ids = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
            out = np.empty((len(ids), self.dim), np.float32)
            for start in range(0, len(ids), 900):  # SQLite allows 999 parameters at least
                chunk = ids[start:start + 900].tolist()
                rows = db.execute(
                    f"SELECT vector FROM vectors WHERE image_id IN ({','.join('?' * len(chunk))})"
                    " ORDER BY image_id", chunk,
                ).fetchall()
                out[start:start + len(rows)] = np.frombuffer(
                    b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        finally:
            db.execute("COMMIT")
        return out

    def changes(self, after: int, upto: int, *, vectors: bool = True,
                chunk: int = 8192) -> Changes:
        """What the write transactions of generations (after, upto] did: the images that became
        active (with their vectors, unless ``vectors`` is false) and the ones retired."""
        column = "v.vector" if vectors else "NULL"
        query = (f"SELECT i.seq, i.id, i.status, {column} FROM images i "
                 "LEFT JOIN vectors v ON v.image_id = i.id AND i.status = 'active' "
                 "WHERE i.seq <= ? AND (i.seq, i.id) > (?, ?) ORDER BY i.seq, i.id LIMIT ?")
        return Changes.read(
            lambda seq, last: self._db.execute(query, (upto, seq, last, chunk)).fetchall(),
            after, self.dim, vectors, chunk)

    def fields(self, ids: Sequence[int], keys: Collection[str] | None = None
               ) -> dict[int, Fields]:
        """The fields of each of ``ids`` that has any: the active ones (see .fields)."""
        return sqlite_fields.fields(self._db, storable_ids(ids), keys)

    def matching(self, where: Where) -> np.ndarray:
        """Active image ids passing ``where``, ascending int64."""
        return self._queries.matching(where)

    def count_matching(self, where: Where) -> int:
        return self._queries.count_matching(where)

    def facets(self, keys: Sequence[str], where: Where | None = None, *, top: int = 20
               ) -> dict[str, list[tuple[Value, int]]]:
        """For each key, its ``top`` most common values among active images passing ``where``,
        with how many images have each: count descending, then value (numbers first)."""
        return self._queries.facets(keys, where, top)

    def field_keys(self) -> list[tuple[str, int]]:
        """Every field key active images have, and how many have it; most common first."""
        return self._queries.field_keys()

    def integrity_problems(self) -> list[str]:
        """What SQLite's integrity check finds wrong with the database file (empty: nothing)."""
        try:
            rows = self._db.execute("PRAGMA integrity_check(20)").fetchall()
        except sqlite3.DatabaseError as exc:
            rows = [(str(exc),)]
        found = [str(r[0]) for r in rows if r[0] != "ok"]
        if not found:
            return []
        return [f"the metadata database {self.path.name} is damaged ({'; '.join(found[:3])}); "
                "restore it from a backup: `lookalike rebuild` can only use what it holds"]

    def tombstones(self) -> set[int]:
        """Ids whose vectors may still sit in an index although the image is no longer active."""
        rows = self._db.execute(
            "SELECT v.image_id FROM vectors v JOIN images i ON i.id = v.image_id "
            "WHERE i.status != 'active'"
        )
        return {r[0] for r in rows}

    def counts(self) -> dict[str, int]:
        counts = {"active": 0, "failed": 0, "removed": 0}
        for status, n in self._db.execute(
            "SELECT status, COUNT(*) FROM images WHERE status != 'active' GROUP BY status"
        ):
            counts[status] = n
        total = self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        counts["active"] = total - counts["failed"] - counts["removed"]
        return counts

    def failures(self) -> list[ImageRecord]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM images WHERE status = 'failed' ORDER BY uri"
        )
        return [ImageRecord.from_row(row) for row in rows]

    def same_bytes(self) -> list[list[int]]:
        """Active images that share a content hash, in groups of two or more, by id."""
        rows = self._db.execute(
            "SELECT group_concat(id) FROM images WHERE status = 'active' "
            "AND content_hash IS NOT NULL GROUP BY content_hash HAVING COUNT(*) > 1")
        return [sorted(int(i) for i in r[0].split(",")) for r in rows]

    def decisions(self) -> list[Decision]:
        rows = self._db.execute(
            "SELECT first, second, verdict, keep, decided_at FROM decisions ORDER BY decided_at")
        return [Decision(*row) for row in rows]

    def decide(self, decisions: Iterable[Decision] = (),
               forget: Iterable[tuple[str, str]] = ()) -> None:
        """Record ``decisions`` (replacing earlier ones on the same pairs) and forget those on
        the pairs ``forget``, in one transaction. No writer lock needed: no image changes."""
        now = time.time()
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?)",
                           ((d.first, d.second, d.verdict, d.keep, now) for d in decisions))
            db.executemany("DELETE FROM decisions WHERE first = ? AND second = ?",
                           (sorted(pair) for pair in forget))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- writing (the caller holds the collection's writer lock) ----------------------------

    def write(self, images: Iterable[NewImage]) -> list[int]:
        """Insert a batch in one transaction; a live row with the same uri is retired first."""
        with self._transaction() as (db, seq):
            return insert_rows(db, seq, time.time(), images)

    def event_positions(self, uris: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        wanted = [stored_uri(u) for u in uris]
        for start in range(0, len(wanted), IN_CHUNK):
            chunk = wanted[start:start + IN_CHUNK]
            found.update((loaded_uri(u), p) for u, p in self._db.execute(
                "SELECT uri, position FROM event_positions WHERE uri IN "
                f"({','.join('?' * len(chunk))})", chunk))
        return found

    def apply_events(self, batch: EventWrite) -> tuple[list[int], list[int]]:
        now = time.time()
        with self._transaction() as (db, seq):
            retired = retire_rows(db, seq, now, batch.retire)
            ids = insert_rows(db, seq, now, batch.images)
            sqlite_fields.set_metadata(db, batch.metadata)
            db.executemany("INSERT OR REPLACE INTO event_positions VALUES (?, ?)",
                           ((stored_uri(u), p) for u, p in batch.positions.items()))
        return ids, retired

    def set_metadata(self, image_id: int, metadata: str) -> None:
        self.set_metadata_many({image_id: metadata})

    def set_metadata_many(self, metadata: Mapping[int, str]) -> None:
        """Replace the metadata (JSON object text) of several images in one transaction."""
        with self._transaction() as (db, _):
            sqlite_fields.set_metadata(db, metadata)

    def mark_removed(self, ids: Iterable[int]) -> int:
        return len(self.retire(ids))

    def retire(self, ids: Iterable[int]) -> list[int]:
        with self._transaction() as (db, seq):
            return retire_rows(db, seq, time.time(), ids)

    def drop_tombstoned_vectors(self, upto: int) -> int:
        """Forget the vectors of images retired by generation ``upto`` or earlier: an index
        built from the store at ``upto`` no longer holds them. Later removals stay tombstones."""
        with self._transaction() as (db, _):
            cursor = db.execute(
                "DELETE FROM vectors WHERE image_id IN "
                "(SELECT id FROM images WHERE status != 'active' AND seq <= ?)", (upto,),
            )
        return cursor.rowcount

    @property
    def _queries(self) -> FieldQueries:
        return FieldQueries("sqlite", "",
                            lambda query, params: self._db.execute(query, params).fetchall())

    def _transaction(self) -> Transaction:
        return Transaction(self._db, self.path)

    def _decode(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(blob, dtype=np.float32).copy()
