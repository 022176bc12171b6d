"""The records every store speaks: a stored image version, an image to write, and what a run of
write transactions changed."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..types import MAX_IMAGE_ID

# File names are bytes; Python hands a name that is not valid UTF-8 over with each bad byte as a
# lone surrogate (os.fsdecode), which no database text column takes. The store keeps such a
# surrogate as this marker plus a character of plane 1, and the marker itself doubled: every
# name round-trips, and a name that was valid UTF-8 (nearly all) is stored unchanged.
# U+FDD0 is a Unicode noncharacter, reserved for internal use, so it never occurs in real text.
_MARK = "\ufdd0"
_TO_STORE = re.compile("[\ud800-\udfff\ufdd0]")
_FROM_STORE = re.compile("\ufdd0(.)", re.DOTALL)
_PLANE_1 = 0x10000 - 0xD800


def storable(image_id: int) -> bool:
    """Whether a store can hold ``image_id`` at all: keys are positive signed 64-bit integers,
    and a larger one would overflow the database driver instead of simply not being found."""
    return 1 <= image_id <= MAX_IMAGE_ID


def storable_ids(ids: Iterable[int]) -> list[int]:
    """``ids`` less those no image can have (:func:`storable`)."""
    return [int(i) for i in ids if storable(int(i))]


def stored_uri(uri: str) -> str:
    """``uri`` as a store keeps it: valid Unicode, whatever the bytes of the file's name."""
    return _TO_STORE.sub(_escape, uri)


def loaded_uri(text: str) -> str:
    """The uri :func:`stored_uri` stored as ``text``."""
    return _FROM_STORE.sub(_unescape, text) if _MARK in text else text


def _escape(found: re.Match[str]) -> str:
    char = found.group()
    return _MARK + (char if char == _MARK else chr(ord(char) + _PLANE_1))


def _unescape(found: re.Match[str]) -> str:
    char = found.group(1)
    return char if char == _MARK else chr(ord(char) - _PLANE_1)


@dataclass(frozen=True)
class ImageRecord:
    """One stored image version."""

    id: int
    uri: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None
    added_at: float = 0.0
    etag: str | None = None  # an object's ETag (s3:// uris), which says whether it changed

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ImageRecord:
        """From a store's (id, uri, size, mtime_ns, content_hash, width, height, status, error,
        added_at, etag) row."""
        (image_id, uri, size, mtime_ns, content_hash, width, height, status, error, added,
         etag) = row
        return cls(image_id, loaded_uri(uri), size, mtime_ns, content_hash, width, height, status,
                   error and loaded_uri(error), added, etag)


@dataclass(frozen=True)
class NewImage:
    """An image to write: its file facts and either a vector or the reason it failed."""

    uri: str
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    width: int | None = None
    height: int | None = None
    vector: np.ndarray | None = None
    error: str | None = None
    metadata: str | None = None  # a JSON object, for images uploaded with metadata
    etag: str | None = None
    # What the decoder read from the file (format, EXIF taken, make, model, lat, lon): part of
    # the image's fields (see .fields); the store derives format from the extension without it.
    file_fields: Mapping[str, str | float] | None = None


VERDICTS = ("distinct", "duplicate")


@dataclass(frozen=True)
class Decision:
    """A person's verdict on two images, by content (their content hashes, ``first < second``),
    so it holds for any file with those bytes: through re-indexing, renames and moves."""

    first: str
    second: str
    verdict: str  # "distinct": not duplicates; "duplicate": confirmed copies
    keep: str | None = None  # for "duplicate": the hash of the copy chosen to keep, if any
    decided_at: float = 0.0

    @classmethod
    def of(cls, a: str, b: str, verdict: str, keep: str | None = None) -> Decision:
        """The decision on the pair ``a``, ``b`` in either order."""
        first, second = sorted((a, b))
        return cls(first, second, verdict, keep)


@dataclass(frozen=True)
class EventWrite:
    """What a batch of stream events does to a store, in one transaction: images written (a live
    row with the same uri retired first), rows retired, metadata replaced, and for each uri the
    position of the newest event applied to it, which a redelivered or late older event is
    checked against (see ``lookalike.stream``)."""

    images: Sequence[NewImage] = ()
    retire: Sequence[int] = ()
    metadata: Mapping[int, str] = field(default_factory=dict)
    positions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Changes:
    """What a run of write transactions did to the set of active images: what a live index
    applies to catch up."""

    ids: np.ndarray  # images that became active, in commit order (int64)
    vectors: np.ndarray | None  # their vectors, (len(ids), dim) float32, when asked for
    removed: np.ndarray  # images retired (int64)

    @classmethod
    def read(cls, page: Callable[[int, int], Sequence[tuple[Any, ...]]], after: int, dim: int,
             vectors: bool, chunk: int) -> Changes:
        """Read (seq, id, status, vector bytes or None) rows in commit order, in keyset pages:
        ``page(seq, id)`` returns up to ``chunk`` rows after that key."""
        rows: list[tuple[Any, ...]] = []
        key = (after, 1 << 62)  # every row of a later generation
        while True:
            found = page(*key)
            rows += found
            if len(found) < chunk:
                return cls.from_rows([r[1:] for r in rows], dim, vectors)
            key = (found[-1][0], found[-1][1])

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Any, ...]], dim: int, vectors: bool) -> Changes:
        """From (id, status, vector bytes or None) rows; failed images change nothing."""
        active = [r for r in rows if r[1] == "active"]
        removed = np.fromiter((r[0] for r in rows if r[1] == "removed"), np.int64)
        ids = np.fromiter((r[0] for r in active), np.int64, count=len(active))
        if not vectors:
            return cls(ids, None, removed)
        blob = b"".join(bytes(r[2]) for r in active)
        return cls(ids, np.frombuffer(blob, np.float32).reshape(len(active), dim).copy(),
                   removed)

    def without(self, held: np.ndarray) -> Changes:
        """These changes less the activation of images in ``held``."""
        keep = ~np.isin(self.ids, held)
        vectors = None if self.vectors is None else self.vectors[keep]
        return Changes(self.ids[keep], vectors, self.removed)

    def __bool__(self) -> bool:
        return bool(len(self.ids) or len(self.removed))


def vector_chunks(page: Callable[[int], Sequence[tuple[Any, ...]]], after_id: int,
                  dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) chunks from keyset pages of (id, vector bytes) rows in id order:
    ``page(last_id)`` returns the next rows after that id (none: the end)."""
    last = after_id
    while True:
        rows = page(last)
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        yield ids, vectors.reshape(len(rows), dim)
        last = int(ids[-1])
