"""The PostgreSQL store's ``fields`` table and its ``field_counts`` (see :mod:`.fields`), kept in
step inside the caller's write transaction, and derived for a schema that predates them. The
filter queries that read them are :mod:`.filtering`'s. ``s`` is the store's quoted schema name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from .fields import SOURCE_COLUMNS, Fields, grouped, image_fields, rows

Read = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

BACKFILL_CHUNK = 5000  # images read and written at a time while deriving the table
_SOURCE = ", ".join(f"i.{c}::text" if c == "file_fields" else f"i.{c}" for c in SOURCE_COLUMNS)


def write_fields(cur: Any, s: str, found: Mapping[int, Fields]) -> None:
    """Add the fields of images that became active (or whose old fields were forgotten)."""
    batch = [row for image_id, fields in found.items() for row in rows(image_id, fields)]
    if batch:
        cur.executemany(f"INSERT INTO {s}.fields VALUES (%s, %s, %s, %s)", batch)
    _count(cur, s, Counter(key for fields in found.values() for key in fields))


def forget_fields(cur: Any, s: str, ids: Sequence[int]) -> None:
    """Delete the fields of ``ids`` (retired, or about to be rewritten)."""
    if not ids:
        return
    gone = set(cur.execute(f"DELETE FROM {s}.fields WHERE image_id = ANY(%s) "
                           "RETURNING image_id, key", (list(ids),)).fetchall())
    _count(cur, s, Counter({key: -n for key, n in Counter(key for _, key in gone).items()}))


def set_metadata(cur: Any, s: str, metadata: Mapping[int, str]) -> None:
    """Replace the metadata of images and rewrite the fields of the active ones among them."""
    metadata = {int(i): text for i, text in metadata.items()}
    if not metadata:
        return
    cur.executemany(f"INSERT INTO {s}.metadata VALUES (%s, %s::jsonb) "
                    "ON CONFLICT (image_id) DO UPDATE SET json = EXCLUDED.json",
                    list(metadata.items()))
    ids = sorted(metadata)
    forget_fields(cur, s, ids)
    found = cur.execute(f"SELECT i.id, {_SOURCE} FROM {s}.images i "
                        "WHERE i.status = 'active' AND i.id = ANY(%s)", (ids,)).fetchall()
    write_fields(cur, s, {image_id: image_fields(source, metadata[image_id])
                          for image_id, *source in found})


def backfill(conn: Any, s: str) -> None:
    """Derive both tables from the active images and their metadata (migration step 5), in
    the migration's transaction: read in pages by id, written with COPY."""
    last, counts = 0, Counter[str]()
    with conn.cursor() as cur:
        while found := cur.execute(
                f"SELECT i.id, {_SOURCE}, m.json::text FROM {s}.images i LEFT JOIN "
                f"{s}.metadata m ON m.image_id = i.id WHERE i.status = 'active' AND i.id > %s "
                "ORDER BY i.id LIMIT %s", (last, BACKFILL_CHUNK)).fetchall():
            with cur.copy(f"COPY {s}.fields (image_id, key, text, num) FROM STDIN") as copy:
                for image_id, *source, metadata in found:
                    fields = image_fields(source, metadata)
                    counts.update(fields.keys())
                    for row in rows(image_id, fields):
                        copy.write_row(row)
            last = found[-1][0]
        _count(cur, s, counts)


def fields(read: Read, s: str, ids: Sequence[int],
           keys: Collection[str] | None) -> dict[int, Fields]:
    if not ids or (keys is not None and not keys):
        return {}
    if keys is None:
        return grouped(read(f"SELECT image_id, key, text, num FROM {s}.fields "
                            "WHERE image_id = ANY(%s)", (list(ids),)))
    return grouped(read(f"SELECT image_id, key, text, num FROM {s}.fields "
                        "WHERE image_id = ANY(%s) AND key = ANY(%s)", (list(ids), list(keys))))


def _count(cur: Any, s: str, change: Counter[str]) -> None:
    """Move the number of active images that have each key by ``change``."""
    moved = [(key, n) for key, n in change.items() if n]
    if moved:
        cur.executemany(f"INSERT INTO {s}.field_counts VALUES (%s, %s) ON CONFLICT (key) "
                        "DO UPDATE SET images = field_counts.images + EXCLUDED.images", moved)
    if any(n < 0 for n in change.values()):
        cur.execute(f"DELETE FROM {s}.field_counts WHERE images <= 0")
