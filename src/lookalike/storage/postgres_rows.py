"""The row writes the PostgreSQL store's transactions are made of: inserting images (retiring the
live row of each uri) and retiring rows, each keeping the ``fields`` table in step.
``cur`` is a cursor in the caller's write transaction, ``s`` the quoted schema name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .fields import Fields, file_fields_json, image_fields
from .postgres_fields import forget_fields, write_fields
from .records import NewImage, storable_ids, stored_uri


def insert_rows(cur: Any, s: str, sequence: str, seq: int, now: float,
                batch: list[NewImage]) -> list[int]:
    """Insert ``batch`` in generation ``seq``, ids drawn from ``sequence``, each retiring the
    live row of its uri; the new ids."""
    if not batch:
        return []
    last = {stored_uri(image.uri): n for n, image in enumerate(batch)}
    ids = sorted(r[0] for r in cur.execute(
        "SELECT nextval(%s) FROM generate_series(1, %s)", (sequence, len(batch))
    ).fetchall())
    forget_fields(cur, s, [r[0] for r in cur.execute(
        f"UPDATE {s}.images SET status = 'removed', removed_at = %s, seq = %s "
        "WHERE uri = ANY(%s) AND status <> 'removed' RETURNING id", (now, seq, list(last))
    ).fetchall()])
    images: list[tuple[Any, ...]] = []
    fields: dict[int, Fields] = {}  # of the rows inserted active
    for n, (image_id, im) in enumerate(zip(ids, batch, strict=True)):
        uri = stored_uri(im.uri)
        # The same uri later in this batch retires this row at once, as a second
        # write would.
        retired = last[uri] != n
        status = "removed" if retired else "failed" if im.vector is None else "active"
        file_fields = file_fields_json(im.file_fields)
        images.append((image_id, uri, im.size, im.mtime_ns, im.content_hash, im.width,
                       im.height, status, im.error and stored_uri(im.error), now,
                       now if retired else None, seq, im.etag, file_fields))
        if status == "active":
            source = (uri, im.size, im.mtime_ns, im.width, im.height, now, file_fields)
            fields[image_id] = image_fields(source, im.metadata)
    cur.executemany(
        f"INSERT INTO {s}.images (id, uri, size, mtime_ns, content_hash, width, "
        "height, status, error, added_at, removed_at, seq, etag, file_fields) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)", images,
    )
    vectors = [(i, _encode(im.vector)) for i, im in zip(ids, batch, strict=True)
               if im.vector is not None]
    if vectors:
        cur.executemany(f"INSERT INTO {s}.vectors VALUES (%s, %b)", vectors)
    metadata = [(i, im.metadata) for i, im in zip(ids, batch, strict=True)
                if im.metadata is not None]
    if metadata:
        cur.executemany(f"INSERT INTO {s}.metadata VALUES (%s, %s::jsonb)", metadata)
    write_fields(cur, s, fields)
    return ids


def retire_rows(cur: Any, s: str, seq: int, now: float, ids: Iterable[int]) -> list[int]:
    """Retire the rows of ``ids`` not removed yet, in generation ``seq``; those it did, in
    ascending order."""
    wanted = storable_ids(ids)
    if not wanted:
        return []
    # The generation row is locked first, so a racing retire waits, then sees this one.
    retired = sorted(r[0] for r in cur.execute(
        f"UPDATE {s}.images SET status = 'removed', removed_at = %s, seq = %s "
        "WHERE id = ANY(%s) AND status <> 'removed' RETURNING id", (now, seq, wanted)
    ).fetchall())
    forget_fields(cur, s, retired)
    return retired


def _encode(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
