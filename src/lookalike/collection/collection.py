"""The façade: one folder holds a collection (manifest, SQLite store, main and delta indexes).

>>> col = Collection.create("photos.lookalike")
>>> col.index(["~/Pictures"])
>>> col.search("query.jpg", k=10)
[SearchHit(image_id=17, uri='/home/me/Pictures/cat.jpg', score=0.93, ...), ...]
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..embedders import Embedder
from ..errors import (
    CollectionExistsError,
    CollectionLockedError,
    DecodeError,
    ImageNotFoundError,
    UsageError,
)
from ..imaging import ImageSource, decode_bytes, load_pixels, to_model_input
from ..index import parse_spec
from ..ingest import Ingestor
from ..live import LiveIndex
from ..live.files import DELTA_INDEX, MAIN_INDEX, remove_stale_temporaries
from ..live.milvus import MilvusLiveIndex, claim_milvus
from ..storage import ImageRecord, NewImage, new_store, open_store
from ..types import CollectionInfo, ImageDetails, IngestReport
from .files import is_upload, remove_quietly, thumbnail, upload_path, write_durably
from .maintenance import IndexMaintenance, file_lock
from .manifest import MANIFEST, new_manifest, read_manifest, write_manifest
from .searching import Searching

DATABASE, LOCK = "lookalike.db", ".lock"


class Collection(Searching, IndexMaintenance):
    """A collection of indexed images on disk. Create it once, open it any number of times."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, weights: str | None = None,
                 runtime: str | None = None, device: str | None = None,
                 threads: int | None = None, precision: str | None = None,
                 max_pixels: int | None = None, store: str | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.model_name: str = manifest["model"]["name"]
        self.dim: int = int(manifest["model"]["dim"])
        self.spec = parse_spec(manifest["index"]["spec"])
        self._weights = weights or manifest["model"].get("weights")
        self._runtime = settings.resolve("runtime", runtime)
        self._device = settings.resolve("device", device)
        self._threads = settings.resolve("threads", threads)
        self._precision = settings.resolve("precision", precision)
        self.max_pixels: int = settings.resolve("max_pixels", max_pixels)
        # The manifest says which store; ``store`` (a URI) may move it or carry its password.
        self.store = open_store(manifest.get("store"), database=path / DATABASE, dim=self.dim,
                                given=store, setting=settings.resolve("store"))
        self._embedder: Embedder | None = None
        self._live: LiveIndex | MilvusLiveIndex | None = None
        self._live_pca: str | None = None  # the PCA file self._live projects with
        self._live_lock = threading.Lock()  # one thread (re)loads the indexes at a time
        self._manifest_stamp: tuple[int, int, int] | None = None  # re-read on first use
        self._write_lock = threading.Lock()  # threads of this process take turns as the writer

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, model: str | None = None,
               weights: str | None = None, index: str | None = None,
               store: str | None = None, **options: Any) -> Collection:
        """Create an empty collection at ``path`` for ``model`` with index spec ``index``;
        ``store`` is ``sqlite`` (the default) or a ``postgresql://`` URI for its metadata."""
        folder = Path(path).expanduser()
        if (folder / MANIFEST).exists():
            raise CollectionExistsError(f"A collection already exists at {folder}.")
        weights = str(Path(weights).expanduser().resolve()) if weights else None
        spec = parse_spec(settings.resolve("index", index))
        manifest = new_manifest(settings.resolve("model", model), weights, spec)
        folder.mkdir(parents=True, exist_ok=True)
        if spec.milvus is not None:  # refused if that Milvus collection exists already
            claim_milvus(spec, folder, int(manifest["model"]["dim"]),
                         settings.resolve("milvus_token"))
        recorded = new_store(settings.resolve("store", store), folder,
                             int(manifest["model"]["dim"]))
        if recorded:
            manifest["store"] = recorded  # without the password
        write_manifest(folder, manifest)
        return cls(folder, manifest, weights=weights, store=store, **options)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, model: str | None = None,
             weights: str | None = None, **options: Any) -> Collection:
        """Open an existing collection; ``model``, if given, must be the one that built it."""
        folder = Path(path).expanduser()
        weights = str(Path(weights).expanduser().resolve()) if weights else None
        manifest = read_manifest(folder, model=model, weights=weights)
        return cls(folder, manifest, weights=weights, **options)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], **kwargs: Any) -> Collection:
        if (Path(path).expanduser() / MANIFEST).is_file():
            kwargs.pop("index", None)
            return cls.open(path, **kwargs)
        return cls.create(path, **kwargs)

    def close(self) -> None:
        if isinstance(self._live, MilvusLiveIndex):
            self._live.close()
        self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- parts, loaded on first use ---------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder.load(
                self.model_name, weights=self._weights, runtime=self._runtime,
                device=self._device, threads=self._threads, precision=self._precision,
                cache_dir=settings.resolve("cache_dir"),
            )
        return self._embedder

    @embedder.setter
    def embedder(self, embedder: Embedder) -> None:
        """Swap in an object with Embedder's interface (a server's query batcher wraps it)."""
        self._embedder = embedder

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the writer lock, waiting up to ``wait`` seconds for a writer in another process
        to finish, then :class:`CollectionLockedError`. Threads of this process take turns."""
        if not self._write_lock.acquire(timeout=max(wait, 60.0)):
            raise CollectionLockedError(f"{self.path} is being written by another thread.")
        try:
            with file_lock(self.path / LOCK, "being written by another process", wait):
                remove_stale_temporaries(self.path)
                # No reduce runs while we hold the lock: write with the manifest's projection,
                # and write the manifest back with what other processes changed in it.
                self._sync_manifest()
                if self._live is not None and not self._is_current(self._live):
                    with self._live_lock:
                        self._replace_live()
                yield
        finally:
            self._write_lock.release()

    def index(self, paths: Iterable[str | os.PathLike[str]], *, batch_size: int | None = None,
              workers: int | None = None, show_progress: bool | None = None,
              remove_missing: bool = True, engine: Any = None,
              ray_address: str | None = None) -> IngestReport:
        """Bring the collection in step with image files and folders (incremental, resumable).

        Indexed files under ``paths`` that no longer exist are removed unless ``remove_missing``
        is false. Compacts at the end when the delta or the tombstones have grown large.
        ``engine="ray"`` (or a :class:`lookalike.ingest.ray.RayEngine`) decodes and embeds on
        the Ray cluster at ``ray_address`` (default: a local Ray started for the run), with
        ``workers`` embedding actors; the vectors are the same as the local engine's.
        """
        paths = list(paths)
        for p in paths:
            if not os.path.exists(p):
                raise UsageError(f"Path {p} does not exist.")
        engine = settings.resolve("engine", engine)
        if engine == "local" and ray_address:
            raise UsageError("ray_address (--ray-address) needs engine='ray' (--engine ray).")
        return self._ingest(paths, batch_size=batch_size, workers=workers,
                            show_progress=show_progress, remove_missing=remove_missing,
                            engine=None if engine == "local" else engine,
                            ray_address=ray_address)

    def sync(self, paths: Iterable[str | os.PathLike[str]]) -> IngestReport:
        """Bring these paths in step: index those that exist, remove those that are gone."""
        return self._ingest(list(paths), workers=0, show_progress=False)

    def _ingest(self, paths: list[str | os.PathLike[str]], *, batch_size: int | None = None,
                workers: int | None = None, show_progress: bool | None = None,
                remove_missing: bool = True, engine: Any = None,
                ray_address: str | None = None) -> IngestReport:
        batch_size = settings.resolve("batch_size", batch_size)
        source = None
        if engine is not None:  # not this machine's processes: a Ray cluster
            from ..ingest.ray import engine_for

            source = engine_for(engine, settings.resolve("ray_address", ray_address),
                                workers).source(self.embedder, batch_size=batch_size,
                                                max_pixels=self.max_pixels,
                                                cache_dir=settings.resolve("cache_dir"))
        with self.writer():
            live = self.live
            ingestor = Ingestor(
                self.store, self.embedder, live, max_pixels=self.max_pixels,
                batch_size=batch_size, workers=settings.resolve("workers", workers),
                checkpoint=self._checkpoint, forget=live.forget, source=source,
            )
            try:
                report = ingestor.run(paths, remove_missing=remove_missing,
                                      show_progress=show_progress)
            finally:
                live.save_delta()
            self._touch_manifest()
        if self.live.needs_compaction():
            self.compact(wait=False)
        return report

    def _checkpoint(self) -> None:
        # Called by long indexing runs now and then: bound the work a crash would redo on open,
        # and keep the delta small enough to stay fast.
        self.live.save_delta()
        if self.live.needs_compaction():
            self.compact(wait=False)

    def add(self, paths: Iterable[str | os.PathLike[str]], **options: Any) -> IngestReport:
        """Index files and folders without removing anything else."""
        return self.index(paths, remove_missing=False, **options)

    def remove(self, images: Iterable[int | str | os.PathLike[str]], *,
               wait: float = 0.0) -> list[int]:
        """Remove images by id or path; gone from results at once. Returns the ids removed.

        Files uploaded into the collection are deleted too; indexed files elsewhere never are.
        """
        records = []
        for image in images:
            image_id = image if isinstance(image, int) else self.find(image)
            record = self.store.get([image_id]).get(image_id) if image_id else None
            if record is None or record.status != "active":
                raise ImageNotFoundError(f"No indexed image {image!r}.")
            records.append(record)
        ids = [r.id for r in records]
        with self.writer(wait):
            self.store.mark_removed(ids)
            self.live.forget(set(ids))
        for record in records:
            if is_upload(self.path, record.uri):
                remove_quietly(Path(record.uri))
        return ids

    def add_bytes(self, data: bytes, *, metadata: dict[str, Any] | None = None,
                  wait: float = 10.0) -> tuple[ImageDetails, bool]:
        """Store an uploaded image inside the collection, embed it and make it searchable.

        Returns the image and whether it is new: identical bytes uploaded before give back that
        image (with ``metadata`` replacing its old metadata, if given). The image is durable and
        searchable when this returns. Raises DecodeError for bytes that are not a usable image.
        """
        decoded = decode_bytes(data, self.embedder.preprocess, self.max_pixels)
        path = upload_path(self.path, decoded.content_hash, decoded.uri)
        meta = json.dumps(metadata, ensure_ascii=False) if metadata is not None else None
        vector = self.embedder.embed_pixels(decoded.pixels[None])  # type: ignore[index]
        with self.writer(wait):
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
                )])
                self.live.add(np.array([image_id], np.int64), vector)
                created = True
        return self.details(image_id), created

    def details(self, image_id: int) -> ImageDetails:
        """An indexed image's location, size and metadata."""
        record = self._record(image_id)
        meta = self.store.metadata(image_id)
        return ImageDetails(
            record.id, record.uri, record.status, record.width, record.height, record.size,
            record.content_hash, record.added_at, is_upload(self.path, record.uri),
            json.loads(meta) if meta else None,
        )

    def file(self, image_id: int) -> Path:
        """The image file of an indexed image (raises ImageNotFoundError if it is gone)."""
        path = Path(self._record(image_id).uri)
        if not path.is_file():
            raise ImageNotFoundError(f"The file of image {image_id} is gone: {path}.")
        return path

    def thumbnail(self, image_id: int, side: int = 256) -> Path:
        """A small cached JPEG of an indexed image."""
        try:
            return thumbnail(self.path, image_id, str(self.file(image_id)), side=side,
                             max_pixels=self.max_pixels)
        except DecodeError as exc:
            raise ImageNotFoundError(f"Image {image_id} can no longer be read: {exc}.") from None

    def _record(self, image_id: int) -> ImageRecord:
        record = self.store.get([image_id]).get(image_id)
        if record is None or record.status != "active":
            raise ImageNotFoundError(f"No indexed image has id {image_id}.")
        return record

    # -- searching --------------------------------------------------------------------------

    def embed(self, images: Iterable[ImageSource | Any]) -> np.ndarray:
        """Embed images (paths, file bytes or PIL images) exactly as indexing does."""
        pixels = [self._pixels(image) for image in images]
        if not pixels:
            return np.zeros((0, self.dim), np.float32)
        return self.embedder.embed_pixels(np.stack(pixels))

    def _pixels(self, image: ImageSource | Any) -> np.ndarray:
        preprocess = self.embedder.preprocess
        if isinstance(image, (str, os.PathLike, bytes)):
            return load_pixels(image, preprocess, max_pixels=self.max_pixels)
        from PIL import Image

        if isinstance(image, Image.Image):
            return to_model_input(image.convert("RGB"), preprocess)
        raise UsageError(f"Cannot search by a {type(image).__name__}; pass a path, bytes or image.")

    def find(self, uri: str | os.PathLike[str]) -> int | None:
        """The id of the indexed image at this path, if there is one."""
        record = self.store.find_uri(os.path.abspath(os.fspath(uri)))
        return record.id if record else None

    # -- reporting --------------------------------------------------------------------------

    def info(self) -> CollectionInfo:
        counts = self.store.counts()
        sizes = {}
        pca_file = self._pca_file()
        for name in (MANIFEST, DATABASE, DATABASE + "-wal", MAIN_INDEX, DELTA_INDEX,
                     *([pca_file] if pca_file else [])):
            file = self.path / name
            if file.exists():
                sizes[name] = file.stat().st_size
        live = self.live
        live.refresh()
        return CollectionInfo(
            path=str(self.path), model=self.model_name, dim=self.dim,
            index_spec=self.spec.text, index_kind=live.main_kind,
            images=counts["active"], failed=counts["failed"], removed=counts["removed"],
            main_vectors=live.main_vectors, delta_vectors=live.delta_vectors,
            tombstones=len(live.tombstones), bytes_on_disk=sizes,
            created=self.manifest["created"], updated=self.manifest["updated"],
            index_dim=live.dim, pca=self.manifest.get("pca"),
            store=self.manifest.get("store", "sqlite"),
        )
