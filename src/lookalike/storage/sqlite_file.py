"""The SQLite store's database file: its tables and how older ones are upgraded, the write
transaction that takes the next generation, the row writes transactions are made of, and telling
a full or failing disk apart from a damaged file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import CorruptCollectionError, DiskWriteError, ReadOnlyCollectionError
from .fields import Fields, file_fields_json, image_fields
from .records import NewImage, stored_uri
from .sqlite_fields import IN_CHUNK, forget_fields, rebuild, write_fields

SCHEMA_VERSION = 5
SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uri TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    content_hash TEXT,
    width INTEGER,
    height INTEGER,
    status TEXT NOT NULL CHECK (status IN ('active', 'failed', 'removed')),
    error TEXT,
    added_at REAL NOT NULL,
    removed_at REAL,
    seq INTEGER NOT NULL DEFAULT 0,  -- the generation that inserted or last retired the row
    etag TEXT,
    file_fields TEXT  -- what the decoder read from the file (JSON), see .fields
);
CREATE UNIQUE INDEX IF NOT EXISTS images_live_uri ON images(uri) WHERE status != 'removed';
CREATE INDEX IF NOT EXISTS images_hash ON images(content_hash);
-- Few rows are not active: readers ask for them after every write (tombstones, counts).
CREATE INDEX IF NOT EXISTS images_inactive ON images(status) WHERE status != 'active';
CREATE TABLE IF NOT EXISTS vectors (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS images_seq ON images(seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metadata (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    json TEXT NOT NULL
);
-- The position of the newest stream event applied to each uri (lookalike.stream).
CREATE TABLE IF NOT EXISTS event_positions (uri TEXT PRIMARY KEY, position TEXT NOT NULL);
-- Verdicts on pairs of images by content hash (lookalike.dedup): they outlive the rows.
CREATE TABLE IF NOT EXISTS decisions (
    first TEXT NOT NULL,
    second TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('distinct', 'duplicate')),
    keep TEXT,
    decided_at REAL NOT NULL,
    PRIMARY KEY (first, second)
);
-- What filters see (see .fields): derived from the active images and their metadata.
CREATE TABLE IF NOT EXISTS fields (
    image_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    text TEXT,
    num REAL
);
CREATE INDEX IF NOT EXISTS fields_text ON fields(key, text, image_id);
CREATE INDEX IF NOT EXISTS fields_num ON fields(key, num, image_id);
CREATE INDEX IF NOT EXISTS fields_image ON fields(image_id);
-- How many active images have each key: counting them from fields takes seconds at 1M images.
CREATE TABLE IF NOT EXISTS field_counts (key TEXT PRIMARY KEY, images INTEGER NOT NULL);
"""


def migrate(db: sqlite3.Connection, writable: Path | None) -> None:
    """Bring the database to SCHEMA_VERSION; ``writable``: its path, None when it is opened
    read-only (then an older version is ReadOnlyCollectionError)."""
    try:  # the common case, a read: already this version
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row and int(row[0]) == SCHEMA_VERSION:
            return
    except sqlite3.OperationalError:
        pass  # no meta table yet: a new database
    if writable is None:
        raise ReadOnlyCollectionError(
            "The metadata database is of an older version, and this one cannot upgrade it "
            "where it is (read-only). Open the collection once where it can be written.")
    db.execute("BEGIN IMMEDIATE")  # two processes opening a new collection take turns
    try:
        db.execute("CREATE TABLE IF NOT EXISTS meta "
                   "(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise CorruptCollectionError(
                f"This collection's store has version {version}; this lookalike knows "
                f"versions up to {SCHEMA_VERSION}. Upgrade lookalike.")
        columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
        if columns and "seq" not in columns:  # version 1: rows written before generations
            db.execute("ALTER TABLE images ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
        if columns and "etag" not in columns:  # versions 1 and 2
            db.execute("ALTER TABLE images ADD COLUMN etag TEXT")
        if columns and "file_fields" not in columns:  # versions 1 to 4
            db.execute("ALTER TABLE images ADD COLUMN file_fields TEXT")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        if version < 5:  # before the fields table: derive it
            rebuild(db)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                   (str(SCHEMA_VERSION),))
        db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Transaction:
    """A write transaction and the generation it commits as."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db, self._path = db, path

    def __enter__(self) -> tuple[sqlite3.Connection, int]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            [seq] = self._db.execute(
                "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation' "
                "RETURNING CAST(value AS INTEGER)"
            ).fetchone()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return self._db, int(seq)

    def __exit__(self, exc_type: object, exc: BaseException | None, _: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.OperationalError as failed:
            if exc is None and disk_failed(failed):  # the commit could not be written
                raise DiskWriteError.writing(self._path, failed) from None
            if exc is None:
                raise
        if isinstance(exc, sqlite3.OperationalError) and disk_failed(exc):
            raise DiskWriteError.writing(self._path, exc) from None


def insert_rows(db: sqlite3.Connection, seq: int, now: float,
                images: Iterable[NewImage]) -> list[int]:
    """Insert ``images`` in generation ``seq``, each retiring the live row of its uri."""
    ids: list[int] = []
    fields: dict[int, Fields] = {}  # of the images inserted, written at the end
    for image in images:
        uri = stored_uri(image.uri)
        retired = [r[0] for r in db.execute(
            "UPDATE images SET status = 'removed', removed_at = ?, seq = ? "
            "WHERE uri = ? AND status != 'removed' RETURNING id", (now, seq, uri)
        ).fetchall()]
        forget_fields(db, [i for i in retired if fields.pop(i, None) is None])
        status = "failed" if image.vector is None else "active"
        file_fields = file_fields_json(image.file_fields)
        cursor = db.execute(
            "INSERT INTO images (uri, size, mtime_ns, content_hash, width, height, status,"
            " error, added_at, seq, etag, file_fields) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (uri, image.size, image.mtime_ns, image.content_hash, image.width,
             image.height, status, image.error and stored_uri(image.error), now, seq,
             image.etag, file_fields),
        )
        image_id = int(cursor.lastrowid or 0)
        ids.append(image_id)
        if image.vector is not None:
            blob = np.ascontiguousarray(image.vector, dtype=np.float32).tobytes()
            db.execute("INSERT INTO vectors VALUES (?, ?)", (image_id, blob))
            source = (uri, image.size, image.mtime_ns, image.width, image.height, now,
                      file_fields)
            fields[image_id] = image_fields(source, image.metadata)
        if image.metadata is not None:
            db.execute("INSERT INTO metadata VALUES (?, ?)", (image_id, image.metadata))
    write_fields(db, fields)
    return ids


def retire_rows(db: sqlite3.Connection, seq: int, now: float, ids: Iterable[int]) -> list[int]:
    """Retire the rows of ``ids`` not removed yet, in generation ``seq``; those it did."""
    wanted = sorted({int(i) for i in ids})
    retired: list[int] = []
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start:start + IN_CHUNK]
        retired += (r[0] for r in db.execute(
            "UPDATE images SET status = 'removed', removed_at = ?, seq = ? WHERE id IN "
            f"({', '.join('?' * len(chunk))}) AND status != 'removed' RETURNING id",
            (now, seq, *chunk),
        ))
    forget_fields(db, retired)
    return sorted(retired)


def disk_full(path: Path) -> bool:
    """Whether the disk holding ``path`` has (next to) no space left."""
    try:
        disk = os.statvfs(path.parent)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < 64 * 1024


def disk_failed(exc: sqlite3.OperationalError) -> bool:
    """SQLite's errors for a full disk (SQLITE_FULL) or one that fails writes (SQLITE_IOERR)."""
    primary = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes keep it in the low byte
    return primary in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
