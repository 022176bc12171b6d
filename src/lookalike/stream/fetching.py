"""Getting an upsert's image ready to embed: read (from S3 or a path), hash and decode it.

:func:`fetch` never raises for a bad image or a missing object; it says what became of the uri
in a :class:`Fetched`. It runs in decoding processes beside the model (``workers``, as indexing
does), or in threads of this process (``workers=0``), where a server's decode budget applies.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import objects
from ..errors import DecodeError, ObjectStoreError
from ..imaging import Reserve, content_hash, decode_bytes, decode_file
from ..ingest import decode_pool
from ..storage import NewImage
from ..types import Preprocess


@dataclass
class Fetched:
    """An upsert made ready outside the writer lock: the row to write (its vector still to come
    when ``pixels`` are given), or why there is none."""

    image: NewImage | None = None
    gone: bool = False  # the object or file no longer exists
    retry: str | None = None  # a failure that may pass
    outage: bool = False  # ...because the object store cannot be reached at all
    pixels: np.ndarray | None = None


def fetch(uri: str, preprocess: Preprocess, max_pixels: int, max_bytes: int,
          reserve: Reserve | None = None) -> Fetched:
    """Read and decode the image at ``uri`` (a worker-process entry point)."""
    if not objects.is_object_uri(uri):  # a local path, named by an operation
        try:
            info = os.stat(uri)
        except OSError:
            return Fetched(gone=True)
        decoded = decode_file(uri, preprocess, max_pixels, max_bytes)
        facts: dict[str, Any] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    else:
        try:
            data, obj = objects.read(uri, max_bytes)
        except ObjectStoreError as exc:
            if exc.reason == "missing":
                return Fetched(gone=True)
            if exc.reason == "too_large":
                return Fetched(NewImage(uri, None, None, None, error=str(exc)))
            # Denied, or refused: it may be fixed. Unreachable: the store is down, not the image.
            return Fetched(retry=str(exc), outage=exc.reason == "unreachable")
        facts = {"size": obj.size, "mtime_ns": obj.mtime_ns, "etag": obj.etag}
        try:
            decoded = decode_bytes(data, preprocess, max_pixels, reserve)
        except DecodeError as exc:
            return Fetched(NewImage(uri, error=str(exc), content_hash=content_hash(data), **facts))
    if decoded.error:
        return Fetched(NewImage(uri, error=decoded.error,
                                content_hash=decoded.content_hash or None, **facts))
    return Fetched(NewImage(uri, content_hash=decoded.content_hash, width=decoded.width,
                            height=decoded.height, file_fields=decoded.fields, **facts),
                   pixels=decoded.pixels)


class Fetcher:
    """Runs :func:`fetch` for many uris at once, in ``workers`` processes (0: in threads of this
    process, within ``reserve``). The processes start on first use."""

    def __init__(self, preprocess: Preprocess, max_pixels: int, max_bytes: int, *,
                 workers: int, reserve: Reserve | None = None) -> None:
        self._args = (preprocess, max_pixels, max_bytes)
        self._workers = workers
        self._reserve = reserve
        self._pool: Executor | None = None

    def submit(self, uri: str) -> Future[Fetched]:
        if self._pool is None:
            # Threads wait on the object store together (8: reads overlap); processes also
            # decode beside the model.
            self._pool = (decode_pool(self._workers) if self._workers > 0 else
                          ThreadPoolExecutor(8, thread_name_prefix="lookalike-fetch"))
        if self._workers > 0:
            return self._pool.submit(fetch, uri, *self._args)
        return self._pool.submit(fetch, uri, *self._args, self._reserve)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
