"""The façade: one folder holds a collection (manifest, SQLite store, main and delta indexes).

>>> col = Collection.create("photos.lookalike")
>>> col.index(["~/Pictures"])
>>> col.search("query.jpg", k=10)
[SearchHit(image_id=17, uri='/home/me/Pictures/cat.jpg', score=0.93, ...), ...]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .embedders import Embedder
from .errors import CollectionExistsError, CollectionLockedError, ImageNotFoundError, UsageError
from .imaging import ImageSource, load_pixels, to_model_input
from .index import parse_spec
from .ingest import Ingestor
from .live import (
    DELTA_INDEX,
    MAIN_INDEX,
    CompactionReport,
    LiveIndex,
    VerifyReport,
    remove_stale_temporaries,
    verify,
)
from .manifest import MANIFEST, new_manifest, now, read_manifest, write_json
from .store import SQLiteStore
from .types import CollectionInfo, IngestReport, SearchHit

DATABASE, LOCK, COMPACT_LOCK = "lookalike.db", ".lock", ".compact.lock"


class Collection:
    """A collection of indexed images on disk. Create it once, open it any number of times."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, weights: str | None = None,
                 runtime: str | None = None, device: str | None = None,
                 threads: int | None = None, precision: str | None = None,
                 max_pixels: int | None = None) -> None:
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
        self.store = SQLiteStore(path / DATABASE, self.dim)
        self._embedder: Embedder | None = None
        self._live: LiveIndex | None = None

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, model: str | None = None,
               weights: str | None = None, index: str | None = None,
               **options: Any) -> Collection:
        """Create an empty collection at ``path`` for ``model`` with index spec ``index``."""
        folder = Path(path).expanduser()
        if (folder / MANIFEST).exists():
            raise CollectionExistsError(f"A collection already exists at {folder}.")
        weights = str(Path(weights).expanduser().resolve()) if weights else None
        manifest = new_manifest(settings.resolve("model", model), weights,
                                parse_spec(settings.resolve("index", index)))
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / MANIFEST, manifest)
        return cls(folder, manifest, weights=weights, **options)

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

    @property
    def live(self) -> LiveIndex:
        """The main and delta indexes, kept in step with the store."""
        if self._live is None:
            self._live = LiveIndex(self.path, self.spec, self.dim, self.store)
        return self._live

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the writer lock; a second writer gets :class:`CollectionLockedError`."""
        with _file_lock(self.path / LOCK, "being written by another process"):
            remove_stale_temporaries(self.path)
            yield

    def index(self, paths: Iterable[str | os.PathLike[str]], *, batch_size: int | None = None,
              workers: int | None = None, show_progress: bool | None = None,
              remove_missing: bool = True) -> IngestReport:
        """Bring the collection in step with image files and folders (incremental, resumable).

        Indexed files under ``paths`` that no longer exist are removed unless ``remove_missing``
        is false. Compacts at the end when the delta or the tombstones have grown large.
        """
        paths = list(paths)
        for p in paths:
            if not os.path.exists(p):
                raise UsageError(f"Path {p} does not exist.")
        return self._ingest(paths, batch_size=batch_size, workers=workers,
                            show_progress=show_progress, remove_missing=remove_missing)

    def sync(self, paths: Iterable[str | os.PathLike[str]]) -> IngestReport:
        """Bring these paths in step: index those that exist, remove those that are gone."""
        return self._ingest(list(paths), workers=0, show_progress=False)

    def _ingest(self, paths: list[str | os.PathLike[str]], *, batch_size: int | None = None,
                workers: int | None = None, show_progress: bool | None = None,
                remove_missing: bool = True) -> IngestReport:
        with self.writer():
            live = self.live
            ingestor = Ingestor(
                self.store, self.embedder, live, max_pixels=self.max_pixels,
                batch_size=settings.resolve("batch_size", batch_size),
                workers=settings.resolve("workers", workers),
                checkpoint=self._checkpoint, forget=live.forget,
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

    def remove(self, images: Iterable[int | str | os.PathLike[str]]) -> list[int]:
        """Remove images by id or path; gone from results at once. Returns the ids removed."""
        ids = []
        for image in images:
            image_id = image if isinstance(image, int) else self.find(image)
            record = self.store.get([image_id]).get(image_id) if image_id else None
            if record is None or record.status != "active":
                raise ImageNotFoundError(f"No indexed image {image!r}.")
            ids.append(int(image_id))  # type: ignore[arg-type]
        with self.writer():
            self.store.mark_removed(ids)
            self.live.forget(set(ids))
            self.live.save_delta()
        return ids

    def compact(self, *, wait: bool = True) -> CompactionReport | None:
        """Build a new main index from the stored vectors and swap it in (searches and writers
        carry on meanwhile). With ``wait=False``, returns None if a compaction is running."""
        try:
            with _file_lock(self.path / COMPACT_LOCK, "being compacted by another process"):
                if self._live is None:  # nothing searches here yet: skip loading the old indexes
                    self._live = LiveIndex(self.path, self.spec, self.dim, self.store, load=False)
                return self._live.compact()
        except CollectionLockedError:
            if wait:
                raise
            return None

    def rebuild(self) -> CompactionReport:
        """Rebuild every index from the stored vectors, ignoring (then replacing) the index files:
        the repair for anything `verify` reports."""
        with _file_lock(self.path / COMPACT_LOCK, "being compacted by another process"):
            self._live = LiveIndex(self.path, self.spec, self.dim, self.store, load=False)
            return self._live.compact()

    def verify(self) -> VerifyReport:
        """Check that the index files agree with the store; changes nothing."""
        return verify(self.path, self.spec, self.dim, self.store)

    def _touch_manifest(self) -> None:
        self.manifest["updated"] = now()
        write_json(self.path / MANIFEST, self.manifest)

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

    def search(self, image: ImageSource | Any, k: int = 10, *,
               ef: int | None = None) -> list[SearchHit]:
        """The ``k`` indexed images most similar to ``image`` (a path, file bytes or PIL image)."""
        return self.search_vector(self.embed([image])[0], k, ef=ef)

    def search_similar(self, image_id: int, k: int = 10, *,
                       ef: int | None = None) -> list[SearchHit]:
        """Look-alikes of an indexed image, from its stored vector (the image itself excluded)."""
        vector = self.store.vector(image_id)
        record = self.store.get([image_id]).get(image_id)
        if vector is None or record is None or record.status != "active":
            raise ImageNotFoundError(f"No indexed image has id {image_id}.")
        return self.search_vector(vector, k, ef=ef, exclude={image_id})

    def find(self, uri: str | os.PathLike[str]) -> int | None:
        """The id of the indexed image at this path, if there is one."""
        record = self.store.find_uri(os.path.abspath(os.fspath(uri)))
        return record.id if record else None

    def search_vector(self, vector: np.ndarray, k: int = 10, *, ef: int | None = None,
                      exclude: set[int] | None = None) -> list[SearchHit]:
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}.")
        ef = settings.resolve("ef_search", ef)
        scores, ids = self.live.search(vector[None, :], k, ef_search=ef, exclude=exclude)
        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        records = self.store.get([i for i, _ in found])
        return [
            SearchHit(i, records[i].uri, s, records[i].width, records[i].height)
            for i, s in found if i in records and records[i].status == "active"
        ]

    # -- reporting --------------------------------------------------------------------------

    def info(self) -> CollectionInfo:
        counts = self.store.counts()
        sizes = {}
        for name in (MANIFEST, DATABASE, DATABASE + "-wal", MAIN_INDEX, DELTA_INDEX):
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
        )


@contextlib.contextmanager
def _file_lock(path: Path, doing: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CollectionLockedError(
            f"{path.parent} is {doing} (lock file {path}). Wait for it to finish; searches "
            "keep working meanwhile."
        ) from None
    try:
        yield
    finally:
        lock.release()
