"""The metadata store in PostgreSQL: the SQLite store's contract, for collections whose writers
run on several machines or whose metadata belongs with the rest of a site's data.

Every method keeps the meaning it has in :class:`.sqlite.SQLiteStore`. What differs:

- Tables live in one PostgreSQL schema per collection (see :mod:`.uri`), created and upgraded by
  :mod:`.migrations`.
- A process holds a small connection pool (psycopg_pool, 1 to 4 connections, autocommit: a read
  is one round trip). ``close()`` closes it.
- Writers on other machines cannot share the collection's lock file, so every write transaction
  first bumps the ``generation`` row, whose row lock makes writers take turns until commit, and
  stamps that generation on every row it inserts or retires. Generations therefore commit in
  increasing order, which readers rely on: they catch up by asking for the rows stamped after
  the last generation they saw (never "ids above the largest I know").
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import (
    CorruptCollectionError,
    MissingDependencyError,
    StoreUnavailableError,
    UsageError,
)
from ..where import Value, Where
from . import postgres_fields
from .fields import Fields
from .filtering import FieldQueries
from .migrations import migrate
from .postgres_rows import insert_rows, retire_rows
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
from .uri import PostgresURI

POOL_MIN, POOL_MAX = 1, 4  # per process: searches take one connection for one round trip
_COLUMNS = ("id, uri, size, mtime_ns, content_hash, width, height, status, error, added_at, "
            "etag")


def _import() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise MissingDependencyError(
            "psycopg", "A PostgreSQL metadata store", "pip install 'lookalike[postgres]'"
        ) from None
    return psycopg, psycopg_pool


class PostgresStore:
    """Metadata and vectors in one PostgreSQL schema. Writers anywhere take turns per
    transaction; readers never wait for them."""

    def __init__(self, uri: PostgresURI, dim: int, *, create: bool = False) -> None:
        """Connect, creating or upgrading the schema. ``create``: for a new collection (the
        schema may not exist yet, and must hold no images)."""
        self._psycopg, pool = _import()
        if not uri.schema:
            raise CorruptCollectionError(f"The store URI {uri.recorded()} names no ?schema=.")
        self.uri, self.dim = uri, dim
        s = f'"{uri.schema}"'  # a checked identifier (see uri.py): safe to format into SQL
        self._s = s
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in dict(uri.params):
            kwargs["connect_timeout"] = 10
        try:
            with self._psycopg.connect(uri.conninfo(), **kwargs) as conn:
                migrate(conn, uri.schema, dim, create=create, where=uri.where())
                self._sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')",
                                              (f"{s}.images",)).fetchone()[0]
        except self._psycopg.Error as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            raise StoreUnavailableError(
                f"PostgreSQL at {uri.where()} refused to open schema {uri.schema!r}: "
                f"{_one_line(exc)}. The user needs CREATE on the database for a new collection, "
                "and USAGE, SELECT, INSERT, UPDATE, DELETE on the schema to use one."
            ) from None
        self._pool = pool.ConnectionPool(
            uri.conninfo(), min_size=POOL_MIN, max_size=POOL_MAX, kwargs=kwargs, open=False,
            name=f"lookalike:{uri.schema}", timeout=30.0,
        )
        self._queries = FieldQueries("postgres", f"{s}.", self._read)
        try:
            self._pool.open(wait=True, timeout=30.0)
        except self._psycopg.Error as exc:
            self._pool.close()
            raise self._unavailable(exc) from None

    def close(self) -> None:
        self._pool.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.uri.recorded()!r})"

    # -- reading ---------------------------------------------------------------------------

    def file_states(self) -> dict[str, ImageRecord]:
        """Every live (active or failed) row by uri: what an indexing run compares files with."""
        rows = self._read(f"SELECT {_COLUMNS} FROM {self._s}.images WHERE status <> 'removed'")
        return {r.uri: r for r in map(ImageRecord.from_row, rows)}

    def get(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        wanted = storable_ids(ids)
        if not wanted:
            return {}
        rows = self._read(f"SELECT {_COLUMNS} FROM {self._s}.images WHERE id = ANY(%s)",
                          (wanted,))
        return {row[0]: ImageRecord.from_row(row) for row in rows}

    def find_uri(self, uri: str) -> ImageRecord | None:
        # "status <> 'removed'" lets PostgreSQL use the partial unique index on live uris.
        rows = self._read(f"SELECT {_COLUMNS} FROM {self._s}.images "
                          "WHERE uri = %s AND status <> 'removed'", (stored_uri(uri),))
        record = ImageRecord.from_row(rows[0]) if rows else None
        return record if record and record.status == "active" else None

    def live_rows(self, uris: Sequence[str]) -> dict[str, ImageRecord]:
        rows = self._read(f"SELECT {_COLUMNS} FROM {self._s}.images WHERE status <> 'removed' "
                          "AND uri = ANY(%s)", ([stored_uri(u) for u in uris],))
        return {r.uri: r for r in map(ImageRecord.from_row, rows)}

    def vector(self, image_id: int) -> np.ndarray | None:
        if not storable(image_id):
            return None
        rows = self._read(f"SELECT vector FROM {self._s}.vectors WHERE image_id = %s",
                          (image_id,), binary=True)
        return self._decode(rows[0][0]) if rows else None

    def vectors(self, ids: Sequence[int]) -> dict[int, np.ndarray]:
        rows = self._read(f"SELECT image_id, vector FROM {self._s}.vectors "
                          "WHERE image_id = ANY(%s)", (storable_ids(ids),), binary=True)
        return {int(image_id): self._decode(blob) for image_id, blob in rows}

    def metadata(self, image_id: int) -> str | None:
        """The JSON metadata stored with an image, if any (jsonb: keys in PostgreSQL's order)."""
        if not storable(image_id):
            return None
        rows = self._read(f"SELECT json::text FROM {self._s}.metadata WHERE image_id = %s",
                          (image_id,))
        return rows[0][0] if rows else None

    def vector_by_hash(self, content_hash: str) -> np.ndarray | None:
        """A stored vector for identical bytes, so a renamed or copied file is not re-embedded."""
        rows = self._read(
            f"SELECT v.vector FROM {self._s}.images i JOIN {self._s}.vectors v "
            "ON v.image_id = i.id WHERE i.content_hash = %s LIMIT 1", (content_hash,),
            binary=True,
        )
        return self._decode(rows[0][0]) if rows else None

    def generation(self) -> int:
        """A counter every write bumps: readers compare it to know when to catch up."""
        rows = self._read(f"SELECT value FROM {self._s}.meta WHERE key = 'generation'")
        return int(rows[0][0]) if rows else 0

    def max_id(self) -> int:
        return int(self._read(f"SELECT max(id) FROM {self._s}.images")[0][0] or 0)

    def iter_vectors(
        self, *, after_id: int = 0, upto_id: int | None = None, active_only: bool = True,
        upto_generation: int | None = None, chunk: int = 8192,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) chunks in id order, ids in (after_id, upto_id], stamped by generation
        ``upto_generation`` or earlier: the source from which any index is rebuilt."""
        # Keyset pages, one query each: no connection or transaction stays open while the
        # caller builds an index between chunks.
        status = "AND i.status = 'active'" if active_only else ""
        query = (f"SELECT v.image_id, v.vector FROM {self._s}.vectors v JOIN {self._s}.images i "
                 f"ON i.id = v.image_id WHERE v.image_id > %s AND v.image_id <= %s "
                 f"AND i.seq <= %s {status} ORDER BY v.image_id LIMIT %s")
        upto = (1 << 62) if upto_id is None else upto_id
        until = (1 << 62) if upto_generation is None else upto_generation
        return vector_chunks(
            lambda last: self._read(query, (last, upto, until, chunk), binary=True),
            after_id, self.dim)

    def sample_vectors(self, n: int, seed: int = 0) -> np.ndarray:
        """Up to ``n`` active vectors drawn uniformly without replacement (seeded), (m, dim)
        float32 in id order, from one consistent snapshot: what a projection or a trained
        index learns from."""
        # The same draw as the SQLite store's, so both pick the same rows from the same data.
        with self._connection() as conn, conn.transaction(), conn.cursor(binary=True) as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            ids = np.fromiter((r[0] for r in cur.execute(
                f"SELECT v.image_id FROM {self._s}.vectors v JOIN {self._s}.images i "
                "ON i.id = v.image_id WHERE i.status = 'active' ORDER BY v.image_id")),
                dtype=np.int64)
            if n < len(ids):
                ids = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
            out = np.empty((len(ids), self.dim), np.float32)
            for start in range(0, len(ids), 8192):
                rows = cur.execute(
                    f"SELECT vector FROM {self._s}.vectors WHERE image_id = ANY(%s) "
                    "ORDER BY image_id", (ids[start:start + 8192].tolist(),),
                ).fetchall()
                out[start:start + len(rows)] = np.frombuffer(
                    b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        return out

    def changes(self, after: int, upto: int, *, vectors: bool = True,
                chunk: int = 8192) -> Changes:
        """What the write transactions of generations (after, upto] did: the images that became
        active (with their vectors, unless ``vectors`` is false) and the ones retired."""
        column = "v.vector" if vectors else "NULL::bytea"
        query = (f"SELECT i.seq, i.id, i.status, {column} FROM {self._s}.images i "
                 f"LEFT JOIN {self._s}.vectors v ON v.image_id = i.id AND i.status = 'active' "
                 "WHERE i.seq <= %s AND (i.seq, i.id) > (%s, %s) ORDER BY i.seq, i.id LIMIT %s")
        return Changes.read(
            lambda seq, last: self._read(query, (upto, seq, last, chunk), binary=True),
            after, self.dim, vectors, chunk)

    def fields(self, ids: Sequence[int], keys: Collection[str] | None = None
               ) -> dict[int, Fields]:
        return postgres_fields.fields(self._read, self._s, storable_ids(ids), keys)

    def matching(self, where: Where) -> np.ndarray:
        return self._queries.matching(where)

    def count_matching(self, where: Where) -> int:
        return self._queries.count_matching(where)

    def facets(self, keys: Sequence[str], where: Where | None = None, *, top: int = 20
               ) -> dict[str, list[tuple[Value, int]]]:
        return self._queries.facets(keys, where, top)

    def field_keys(self) -> list[tuple[str, int]]:
        return self._queries.field_keys()

    def integrity_problems(self) -> list[str]:
        """Nothing to check here: PostgreSQL checksums and recovers its own pages."""
        return []

    def tombstones(self) -> set[int]:
        """Ids whose vectors may still sit in an index although the image is no longer active."""
        rows = self._read(f"SELECT v.image_id FROM {self._s}.vectors v JOIN {self._s}.images i "
                          "ON i.id = v.image_id WHERE i.status <> 'active'")
        return {r[0] for r in rows}

    def counts(self) -> dict[str, int]:
        counts = {"active": 0, "failed": 0, "removed": 0}
        rows = self._read(
            f"SELECT status, count(*) FROM {self._s}.images WHERE status <> 'active' "
            f"GROUP BY status UNION ALL SELECT 'total', count(*) FROM {self._s}.images"
        )
        found = {status: int(n) for status, n in rows}
        counts.update({k: v for k, v in found.items() if k in counts})
        counts["active"] = found["total"] - counts["failed"] - counts["removed"]
        return counts

    def failures(self) -> list[ImageRecord]:
        rows = self._read(f"SELECT {_COLUMNS} FROM {self._s}.images WHERE status = 'failed' "
                          "ORDER BY uri COLLATE \"C\"")
        return [ImageRecord.from_row(row) for row in rows]

    # -- writing ---------------------------------------------------------------------------

    def write(self, images: Iterable[NewImage]) -> list[int]:
        """Insert a batch in one transaction; a live row with the same uri is retired first."""
        with self._transaction() as (cur, seq):
            return insert_rows(cur, self._s, self._sequence, seq, time.time(), list(images))

    def event_positions(self, uris: Sequence[str]) -> dict[str, str]:
        rows = self._read(f"SELECT uri, position FROM {self._s}.event_positions "
                          "WHERE uri = ANY(%s)", ([stored_uri(u) for u in uris],))
        return {loaded_uri(u): p for u, p in rows}

    def apply_events(self, batch: EventWrite) -> tuple[list[int], list[int]]:
        now = time.time()
        with self._transaction() as (cur, seq):
            retired = retire_rows(cur, self._s, seq, now, batch.retire)
            ids = insert_rows(cur, self._s, self._sequence, seq, now, list(batch.images))
            postgres_fields.set_metadata(cur, self._s, batch.metadata)
            if batch.positions:
                cur.executemany(f"INSERT INTO {self._s}.event_positions VALUES (%s, %s) "
                                "ON CONFLICT (uri) DO UPDATE SET position = EXCLUDED.position",
                                [(stored_uri(u), p) for u, p in batch.positions.items()])
        return ids, retired

    def same_bytes(self) -> list[list[int]]:
        rows = self._read(
            f"SELECT array_agg(id ORDER BY id) FROM {self._s}.images WHERE status = 'active' "
            "AND content_hash IS NOT NULL GROUP BY content_hash HAVING count(*) > 1")
        return [list(r[0]) for r in rows]

    def decisions(self) -> list[Decision]:
        rows = self._read(f"SELECT first, second, verdict, keep, decided_at FROM "
                          f"{self._s}.decisions ORDER BY decided_at")
        return [Decision(*row) for row in rows]

    def decide(self, decisions: Iterable[Decision] = (),
               forget: Iterable[tuple[str, str]] = ()) -> None:
        now = time.time()
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self._s}.decisions VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (first, second) DO UPDATE SET verdict = EXCLUDED.verdict, "
                "keep = EXCLUDED.keep, decided_at = EXCLUDED.decided_at",
                [(d.first, d.second, d.verdict, d.keep, now) for d in decisions])
            cur.executemany(f"DELETE FROM {self._s}.decisions WHERE first = %s AND second = %s",
                            [tuple(sorted(pair)) for pair in forget])

    def set_metadata(self, image_id: int, metadata: str) -> None:
        self.set_metadata_many({image_id: metadata})

    def set_metadata_many(self, metadata: Mapping[int, str]) -> None:
        with self._transaction() as (cur, _):
            postgres_fields.set_metadata(cur, self._s, metadata)

    def mark_removed(self, ids: Iterable[int]) -> int:
        return len(self.retire(ids))

    def retire(self, ids: Iterable[int]) -> list[int]:
        with self._transaction() as (cur, seq):
            return retire_rows(cur, self._s, seq, time.time(), ids)

    def drop_tombstoned_vectors(self, upto: int) -> int:
        """Forget the vectors of images retired by generation ``upto`` or earlier: an index
        built from the store at ``upto`` no longer holds them. Later removals stay tombstones."""
        with self._transaction() as (cur, _):
            cur.execute(f"DELETE FROM {self._s}.vectors WHERE image_id IN (SELECT id FROM "
                        f"{self._s}.images WHERE status <> 'active' AND seq <= %s)", (upto,))
            return cur.rowcount

    # -- connections -----------------------------------------------------------------------

    def _read(self, query: str, params: Sequence[Any] = (), *,
              binary: bool = False) -> list[tuple[Any, ...]]:
        try:
            return self._read_once(query, params, binary)
        except self._psycopg.Error as exc:
            if not _connection_lost(exc):
                raise
        # A pooled connection the server has closed since (a restart): the pool drops it on
        # return, and a read is safe to repeat once.
        try:
            return self._read_once(query, params, binary)
        except self._psycopg.Error as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            raise

    def _read_once(self, query: str, params: Sequence[Any],
                   binary: bool) -> list[tuple[Any, ...]]:
        with self._pool.connection() as conn, conn.cursor(binary=binary) as cur:
            return cur.execute(query, params).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[tuple[Any, int]]:
        """A write transaction and the generation it commits as, its turn taken: the generation
        row stays locked until commit."""
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            [seq] = cur.execute(f"UPDATE {self._s}.meta SET value = (value::bigint + 1)::text "
                                "WHERE key = 'generation' RETURNING value::bigint").fetchone()
            yield cur, int(seq)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection; losing the server becomes StoreUnavailableError, not retried
        (a commit may or may not have happened)."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._psycopg.Error as exc:
            if _connection_lost(exc):
                raise self._unavailable(exc) from None
            if isinstance(exc, self._psycopg.DataError):  # e.g. a NUL character in metadata
                raise UsageError(f"PostgreSQL refused a value: {_one_line(exc)}.") from None
            raise

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        reason = _one_line(exc)
        who = f" as user {self.uri.user!r}" if self.uri.user else ""
        return StoreUnavailableError(
            f"Cannot reach the PostgreSQL metadata store at {self.uri.where()}{who}: {reason}. "
            "Check that the server runs and accepts connections from here; a password comes "
            "from the store URI (--store or LOOKALIKE_STORE), PGPASSWORD or ~/.pgpass."
        )

    def _decode(self, blob: bytes) -> np.ndarray:
        return np.frombuffer(blob, dtype=np.float32).copy()


def _connection_lost(exc: BaseException) -> bool:
    """Whether the server could not be reached (as opposed to a query it refused)."""
    if type(exc).__name__ == "PoolTimeout":  # no connection came free, or none could be made
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:  # raised by libpq itself: refused, timed out, closed mid-query
        return type(exc).__name__ in ("OperationalError", "InterfaceError")
    # 08: connection exception; 57P0x: the server shut down or is starting; 28: bad password
    return sqlstate.startswith(("08", "57P", "28"))


def _one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip().rstrip(".")
