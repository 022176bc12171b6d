"""Files a collection keeps itself (uploaded images, content-addressed, and cached thumbnails),
and the one way an indexed image's file is opened again.

Paths are only ever built from a content hash or an image id, never from anything a user sent,
so no request can name a file outside the collection. An indexed file is read only while it is
still the file that was indexed (:func:`open_indexed`), so whoever can write into an indexed
folder cannot make the server read anything else through it. An indexed object (``s3://``) is
read only in the version that was indexed: its ETag is sent as ``If-Match``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import objects
from ..errors import DecodeError, ImageFileError, ObjectStoreError
from ..imaging import Reserve, content_hash, file_hash, open_image
from ..live import remove_stale_temporaries
from ..storage import ImageRecord
from ..types import shown_uri

UPLOADS, THUMBNAILS = "uploads", "thumbnails"
# Non-blocking, so that a FIFO put in a file's place cannot hang the open; no effect on reads of
# a regular file, the only kind ever read.
_OPEN = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_AGAIN = ("Run `lookalike index` on its folder to bring the collection up to date (or "
          "`lookalike remove` it).")


@dataclass(frozen=True)
class ImageFile:
    """An indexed image's file, open and checked; the caller closes ``file``."""

    file: BinaryIO
    size: int
    media_type: str


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


def remove_stale_uploads(folder: Path) -> None:
    """Delete what uploads killed mid-write left in ``uploads/xx/`` (see write_durably)."""
    for sub in sorted((folder / UPLOADS).glob("??")):
        remove_stale_temporaries(sub)


def open_indexed(record: ImageRecord) -> ImageFile:
    """Open the file of an indexed image, only while it is still the file that was indexed: a
    regular file with the stored size and modification time whose bytes hash to the stored
    content hash, checked on the open descriptor, so nothing can be swapped in between the check
    and the read. Size and time alone would not do: whoever can write into an indexed folder can
    plant an image of another file's size and time, then swap a folder on its path for a link to
    where that file is. The last component is opened without following a symlink, unless the
    file was indexed through one (indexing follows them), and then only to a regular file.
    Raises ImageFileError: ``missing`` or ``changed``.

    An object is streamed from the store in the version indexed (its ETag, as ``If-Match``),
    with the media type its key's extension says; ObjectStoreError when the store cannot be
    reached or refuses."""
    if objects.is_object_uri(record.uri):
        return _open_object(record)
    fh, size = _open_unchanged(record)
    try:
        if record.content_hash is not None and file_hash(fh) != record.content_hash:
            raise _changed(record)
        fh.seek(0)
        return ImageFile(fh, size, _media_type(fh))
    except BaseException:
        fh.close()
        raise


def read_indexed(record: ImageRecord, max_bytes: int) -> bytes:
    """The bytes of an indexed image's file, read once, on the terms of :func:`open_indexed`;
    DecodeError (``too_large``) for a file over ``max_bytes``."""
    if objects.is_object_uri(record.uri):
        data = _read_object(record, max_bytes)
    else:
        data = _read_file(record, max_bytes)
    if record.content_hash is not None and content_hash(data) != record.content_hash:
        raise _changed(record)
    return data


def _read_file(record: ImageRecord, max_bytes: int) -> bytes:
    fh, size = _open_unchanged(record)
    with fh:
        if size > max_bytes:
            raise DecodeError(f"file is over the size limit of {max_bytes:,} bytes", "too_large")
        return fh.read()


def _open_object(record: ImageRecord) -> ImageFile:
    with _object_errors(record):
        body, info = objects.open_object(record.uri, etag=record.etag)
    if record.size is not None and info.size != record.size:
        body.close()
        raise _changed(record)
    return ImageFile(body, info.size, _media_type_of_name(record.uri))


def _read_object(record: ImageRecord, max_bytes: int) -> bytes:
    with _object_errors(record):
        data, info = objects.read(record.uri, max_bytes, etag=record.etag)
    if record.size is not None and info.size != record.size:
        raise _changed(record)
    return data


@contextlib.contextmanager
def _object_errors(record: ImageRecord) -> Iterator[None]:
    """An object gone or changed is what a file gone or changed is (ImageFileError); one too
    large, a DecodeError; the rest (unreachable, denied) stay ObjectStoreError."""
    try:
        yield
    except ObjectStoreError as exc:
        if exc.reason == "missing":
            raise ImageFileError(f"The object of image {record.id} is gone: "
                                 f"{shown_uri(record.uri)}. {_AGAIN}", "missing") from None
        if exc.reason == "changed":
            raise _changed(record) from None
        if exc.reason == "too_large":
            raise DecodeError(str(exc), "too_large") from None
        raise


def _open_unchanged(record: ImageRecord) -> tuple[BinaryIO, int]:
    """The open file of ``record`` and its size, while it is a regular file of the stored size
    and modification time (the content hash is the caller's to check)."""
    path = record.uri
    missing = ImageFileError(f"The file of image {record.id} is gone or is no longer a regular "
                             f"file: {shown_uri(path)}. {_AGAIN}", "missing")
    try:
        fd = os.open(path, _OPEN | _NOFOLLOW)
    except OSError:
        try:  # never open a device or FIFO a link points at: opening some has effects
            if not (os.path.islink(path) and stat.S_ISREG(os.stat(path).st_mode)):
                raise missing from None
            fd = os.open(path, _OPEN)
        except OSError:
            raise missing from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise missing
        if ((record.size is not None and st.st_size != record.size)
                or (record.mtime_ns is not None and st.st_mtime_ns != record.mtime_ns)):
            raise _changed(record)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), st.st_size


def _changed(record: ImageRecord) -> ImageFileError:
    return ImageFileError(f"The file of image {record.id} has changed since it was indexed: "
                          f"{shown_uri(record.uri)}. {_AGAIN}", "changed")


def _media_type_of_name(name: str) -> str:
    """The MIME type of an image format with the extension ``name`` has (only image types:
    an object named ``.html`` is never served as a page), else ``application/octet-stream``."""
    from PIL import Image

    image_format = Image.registered_extensions().get(os.path.splitext(name)[1].lower())
    return Image.MIME.get(image_format or "", "application/octet-stream")


def _media_type(fh: BinaryIO) -> str:
    """The MIME type of an open image file, sniffed from its first bytes; leaves it at 0."""
    from PIL import Image

    try:
        with Image.open(fh) as image:  # a file object it was given, Pillow leaves open
            kind = Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, SyntaxError, ValueError):
        kind = "application/octet-stream"
    fh.seek(0)
    return kind


def thumbnail(folder: Path, image_id: int, read: Callable[[], bytes], *, side: int,
              max_pixels: int, name: str, reserve: Reserve | None = None) -> bytes:
    """A JPEG of at most ``side`` pixels a side of image ``image_id``, made on first use from
    the bytes ``read()`` returns and cached in the collection (ids are never reused, so the
    cache never goes stale); on a read-only or full disk it is made each time instead.
    Raises DecodeError for a bad source."""
    path = folder / THUMBNAILS / str(side) / f"{image_id}.jpg"
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    image = open_image(read(), max_pixels=max_pixels, draft_to=side, name=name, reserve=reserve)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=82, optimize=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{id(buffer)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)  # a cache: atomic, but no fsync needed
    except OSError:  # a read-only or full disk: not cached
        with contextlib.suppress(OSError):
            tmp.unlink()
    return buffer.getvalue()
    image = open_image(read(), max_pixels=max_pixels, draft_to=side, name=name, reserve=reserve)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=82, optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{id(buffer)}.tmp"
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)  # a cache: atomic, but no fsync needed
    return path
