"""Files a collection keeps itself: uploaded images (content-addressed) and cached thumbnails.

Paths are only ever built from a content hash or an image id, never from anything a user sent,
so no request can name a file outside the collection.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from ..imaging import open_image

UPLOADS, THUMBNAILS = "uploads", "thumbnails"


def upload_path(folder: Path, digest: str, extension: str) -> Path:
    """Where an upload with this content hash lives: ``uploads/ab/abcdef....jpg``."""
    return folder / UPLOADS / digest[:2] / f"{digest}{extension}"


def is_upload(folder: Path, uri: str) -> bool:
    return Path(uri).parent.parent == folder / UPLOADS


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that it survives a crash once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def thumbnail(folder: Path, image_id: int, source: str, *, side: int, max_pixels: int) -> Path:
    """A cached JPEG of at most ``side`` pixels a side for image ``image_id`` (made on first use;
    ids are never reused, so the cache never goes stale). Raises DecodeError for a bad source."""
    path = folder / THUMBNAILS / str(side) / f"{image_id}.jpg"
    if path.is_file():
        return path
    image = open_image(source, max_pixels=max_pixels, draft_to=side)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=82, optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{id(buffer)}.tmp"
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)  # a cache: atomic, but no fsync needed
    return path
