"""The SQLite store's ``fields`` table and its ``field_counts`` (see :mod:`.fields`), kept in
step with the images and their metadata inside the caller's write transaction. The filter
queries that read them are :mod:`.filtering`'s.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .fields import SOURCE_COLUMNS, Fields, grouped, image_fields, rows

IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's limit on bound parameters
_SOURCE = ", ".join(f"i.{column}" for column in SOURCE_COLUMNS)


def write_fields(db: sqlite3.Connection, found: Mapping[int, Fields]) -> None:
    """Add the fields of images that became active (or whose old fields were forgotten)."""
    db.executemany("INSERT INTO fields VALUES (?, ?, ?, ?)",
                   [row for image_id, fields in found.items() for row in rows(image_id, fields)])
    _count(db, Counter(key for fields in found.values() for key in fields))


def forget_fields(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Delete the fields of ``ids`` (retired, or about to be rewritten)."""
    if not ids:
        return
    gone: set[tuple[int, str]] = set()
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start:start + IN_CHUNK]
        gone.update(db.execute("DELETE FROM fields WHERE image_id IN "
                               f"({', '.join('?' * len(chunk))}) RETURNING image_id, key",
                               chunk).fetchall())
    _count(db, Counter({key: -n for key, n in Counter(key for _, key in gone).items()}))


def set_metadata(db: sqlite3.Connection, metadata: Mapping[int, str]) -> None:
    """Replace the metadata of images and rewrite the fields of the active ones among them."""
    metadata = {int(i): text for i, text in metadata.items()}
    db.executemany("INSERT OR REPLACE INTO metadata VALUES (?, ?)", metadata.items())
    ids = sorted(metadata)
    forget_fields(db, ids)
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start:start + IN_CHUNK]
        found = db.execute(
            f"SELECT i.id, {_SOURCE} FROM images i WHERE i.status = 'active' AND i.id IN "
            f"({', '.join('?' * len(chunk))})", chunk).fetchall()
        write_fields(db, {image_id: image_fields(source, metadata[image_id])
                          for image_id, *source in found})


def rebuild(db: sqlite3.Connection) -> None:
    """Derive both tables again from the active images and their metadata."""
    db.execute("DELETE FROM fields")
    db.execute("DELETE FROM field_counts")
    found = db.execute(f"SELECT i.id, {_SOURCE}, m.json FROM images i LEFT JOIN metadata m "
                       "ON m.image_id = i.id WHERE i.status = 'active'")
    while page := found.fetchmany(5000):
        write_fields(db, {image_id: image_fields(source, metadata)
                          for image_id, *source, metadata in page})


def fields(db: sqlite3.Connection, ids: Sequence[int],
           keys: Collection[str] | None) -> dict[int, Fields]:
    wanted = sorted(keys) if keys is not None else None
    if wanted is not None and not wanted:
        return {}
    only = "" if wanted is None else f" AND key IN ({', '.join('?' * len(wanted))})"
    found: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start:start + IN_CHUNK]
        # By image: given keys too, SQLite would otherwise read each key's every row.
        found += db.execute("SELECT image_id, key, text, num FROM fields INDEXED BY fields_image "
                            f"WHERE image_id IN ({', '.join('?' * len(chunk))}){only}",
                            [*chunk, *(wanted or [])]).fetchall()
    return grouped(found)


def _count(db: sqlite3.Connection, change: Counter[str]) -> None:
    """Move the number of active images that have each key by ``change``."""
    db.executemany("INSERT INTO field_counts VALUES (?, ?) ON CONFLICT (key) "
                   "DO UPDATE SET images = images + excluded.images",
                   [(key, n) for key, n in change.items() if n])
    if any(n < 0 for n in change.values()):
        db.execute("DELETE FROM field_counts WHERE images <= 0")
