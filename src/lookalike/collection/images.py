"""Images one at a time: an upload stored inside the collection, a removal, and an indexed
image's details, file, thumbnail and model input.

Every decode happens within one set of :class:`DecodeLimits` (and a server's memory budget),
and an indexed file is only ever read while it is still the file that was indexed
(:func:`.files.open_indexed`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embedders import Embedder
from ..errors import DecodeError, ImageNotFoundError, UsageError
from ..imaging import ImageSource, Reserve, decode_bytes, load_pixels, to_model_input
from ..objects import is_object_uri
from ..storage import ImageRecord, NewImage, Store
from ..types import ImageDetails, shown_uri
from .files import (
    ImageFile,
    is_upload,
    open_indexed,
    read_indexed,
    remove_quietly,
    remove_stale_uploads,
    thumbnail,
    upload_path,
    write_durably,
)
from .indexes import Indexes


@dataclass(frozen=True)
class DecodeLimits:
    """What any decode of this collection may take: pixels, file bytes, and memory (reserved
    from a budget shared with other processes, when one is given)."""

    max_pixels: int
    max_file_bytes: int
    reserve: Reserve | None = None


class Images:
    """The collection's images by id or path; ``embedder`` is called when a model is needed."""

    def __init__(self, folder: Path, store: Store, indexes: Indexes, limits: DecodeLimits,
                 embedder: Callable[[], Embedder]) -> None:
        self.folder, self.store, self.indexes, self.limits = folder, store, indexes, limits
        self._embedder = embedder
        self._uploads_swept = False

    def record(self, image_id: int) -> ImageRecord:
        """The active row of ``image_id``; ImageNotFoundError if there is none."""
        record = self.store.get([image_id]).get(image_id)
        if record is None or record.status != "active":
            raise ImageNotFoundError(f"No indexed image has id {image_id}.")
        return record

    def find(self, uri: str | os.PathLike[str]) -> int | None:
        """The id of the active image at a path (made absolute) or an ``s3://`` URI."""
        key = str(uri) if is_object_uri(uri) else os.path.abspath(os.fspath(uri))
        record = self.store.find_uri(key)
        return record.id if record else None

    def details(self, image_id: int) -> ImageDetails:
        record = self.record(image_id)
        meta = self.store.metadata(image_id)
        return ImageDetails(
            record.id, record.uri, record.status, record.width, record.height, record.size,
            record.content_hash, record.added_at, is_upload(self.folder, record.uri),
            json.loads(meta) if meta else None,
        )

    def open_file(self, image_id: int) -> ImageFile:
        return open_indexed(self.record(image_id))

    def thumbnail(self, image_id: int, side: int) -> bytes:
        record, limits = self.record(image_id), self.limits
        try:
            return thumbnail(self.folder, image_id,
                             lambda: read_indexed(record, limits.max_file_bytes), side=side,
                             max_pixels=limits.max_pixels, name=record.uri,
                             reserve=limits.reserve)
        except DecodeError as exc:
            raise ImageNotFoundError(f"Image {image_id} can no longer be read: {exc}.") from None

    def model_input(self, image: ImageSource | Any) -> np.ndarray:
        preprocess, limits = self._embedder().preprocess, self.limits
        if isinstance(image, (str, os.PathLike, bytes)):
            return load_pixels(image, preprocess, max_pixels=limits.max_pixels,
                               max_bytes=limits.max_file_bytes, reserve=limits.reserve)
        from PIL import Image

        if isinstance(image, Image.Image):
            return to_model_input(image.convert("RGB"), preprocess)
        raise UsageError(f"Cannot search by a {type(image).__name__}; pass a path, bytes or image.")

    def add_bytes(self, data: bytes, *, metadata: dict[str, Any] | None,
                  wait: float) -> tuple[ImageDetails, bool]:
        embedder = self._embedder()
        decoded = decode_bytes(data, embedder.preprocess, self.limits.max_pixels,
                               self.limits.reserve)
        path = upload_path(self.folder, decoded.content_hash, decoded.uri)
        meta = json.dumps(metadata, ensure_ascii=False) if metadata is not None else None
        assert decoded.pixels is not None  # decode_bytes raises DecodeError instead
        vector = embedder.embed_pixels(decoded.pixels[None])
        with self.indexes.image_writer(wait):
            if not self._uploads_swept:  # once per process: an upload killed mid-write
                remove_stale_uploads(self.folder)
                self._uploads_swept = True
            existing = self.store.find_uri(str(path))
            if existing is not None:
                if meta is not None:
                    self.store.set_metadata(existing.id, meta)
                image_id, created = existing.id, False
            else:
                write_durably(path, data)  # the file first: a row never points at nothing
                stat = path.stat()
                [image_id] = self.store.write([NewImage(
                    str(path), stat.st_size, stat.st_mtime_ns, decoded.content_hash,
                    decoded.width, decoded.height, vector[0], metadata=meta,
                    file_fields=decoded.fields,
                )])
                self.indexes.committed()
                created = True
            # Still the writer: a removal cannot land between the write and this answer.
            return self.details(image_id), created

    def remove(self, images: Iterable[int | str | os.PathLike[str]], *,
               wait: float) -> list[int]:
        records = []
        for image in images:
            image_id = image if isinstance(image, int) else self.find(image)
            record = self.store.get([image_id]).get(image_id) if image_id else None
            if record is None or record.status != "active":
                what = image if isinstance(image, int) else f"'{shown_uri(os.fspath(image))}'"
                raise ImageNotFoundError(f"No indexed image {what}.")
            records.append(record)
        with self.indexes.image_writer(wait):
            removed = set(self.store.retire([r.id for r in records]))
            self.indexes.committed()
            # Still the writer: an upload of the same bytes (one content-addressed file) cannot
            # be acknowledged between this check and the unlink.
            for record in records:
                if (record.id in removed and is_upload(self.folder, record.uri)
                        and self.store.find_uri(record.uri) is None):
                    remove_quietly(Path(record.uri))
        return [r.id for r in records if r.id in removed]
