"""The façade: one folder holds a collection (manifest, SQLite store, Faiss index).

>>> col = Collection.create("photos.lookalike")
>>> col.index(["~/Pictures"])
>>> col.search("query.jpg", k=10)
[SearchHit(image_id=17, uri='/home/me/Pictures/cat.jpg', score=0.93, ...), ...]
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .embedders import Embedder, embedding_fingerprint, get_model_spec
from .errors import (
    CollectionExistsError,
    CollectionLockedError,
    CollectionNotFoundError,
    CorruptCollectionError,
    ImageNotFoundError,
    ModelMismatchError,
    UsageError,
)
from .imaging import ImageSource, load_pixels, to_model_input
from .index import FaissIndex, parse_spec
from .ingest import Ingestor
from .store import SQLiteStore
from .types import CollectionInfo, IngestReport, SearchHit

FORMAT_VERSION = 1
MANIFEST, DATABASE, MAIN_INDEX, LOCK = "manifest.json", "lookalike.db", "main.index", ".lock"
REBUILD_TOMBSTONE_FRACTION = 0.1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Collection:
    """A collection of indexed images on disk. Create it once, open it any number of times."""

    def __init__(self, path: Path, manifest: dict[str, Any], *, weights: str | None = None,
                 runtime: str | None = None, device: str | None = None,
                 threads: int | None = None, max_pixels: int | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.model_name: str = manifest["model"]["name"]
        self.dim: int = int(manifest["model"]["dim"])
        self.spec = parse_spec(manifest["index"]["spec"])
        self._weights = weights or manifest["model"].get("weights")
        self._runtime = settings.resolve("runtime", runtime)
        self._device = settings.resolve("device", device)
        self._threads = settings.resolve("threads", threads)
        self.max_pixels: int = settings.resolve("max_pixels", max_pixels)
        self.store = SQLiteStore(path / DATABASE, self.dim)
        self._embedder: Embedder | None = None
        self._index: FaissIndex | None = None
        self._tombstones: set[int] = set()

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, model: str | None = None,
               weights: str | None = None, index: str | None = None,
               **options: Any) -> Collection:
        """Create an empty collection at ``path`` for ``model`` with index spec ``index``."""
        folder = Path(path).expanduser()
        if (folder / MANIFEST).exists():
            raise CollectionExistsError(f"A collection already exists at {folder}.")
        spec = get_model_spec(settings.resolve("model", model))
        index_spec = parse_spec(settings.resolve("index", index))
        if weights:
            weights = str(Path(weights).expanduser().resolve())
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": {"name": spec.name, "dim": spec.dim, "weights": weights,
                      "fingerprint": embedding_fingerprint(spec, weights),
                      "preprocess": spec.preprocess.to_dict()},
            "index": {"spec": index_spec.text},
            "created": _now(),
            "updated": _now(),
        }
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / MANIFEST, manifest)
        return cls(folder, manifest, weights=weights, **options)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, model: str | None = None,
             weights: str | None = None, **options: Any) -> Collection:
        """Open an existing collection; ``model``, if given, must be the one that built it."""
        folder = Path(path).expanduser()
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise CollectionNotFoundError(
                f"No collection at {folder}. Create one with `lookalike index PATH "
                f"--collection {folder}`, or pass the right --collection."
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CorruptCollectionError(f"Cannot read {manifest_path}: {exc}") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CorruptCollectionError(
                f"{folder} has collection format {manifest.get('format_version')}, this lookalike "
                f"reads format {FORMAT_VERSION}; upgrade lookalike or rebuild the collection."
            )
        built_with = manifest["model"]["name"]
        if model and model != built_with:
            raise ModelMismatchError(
                f"{folder} was built with model {built_with!r}, not {model!r}. Use "
                f"--model {built_with}, or index into a new --collection to use {model}."
            )
        if weights:
            weights = str(Path(weights).expanduser().resolve())
        spec = get_model_spec(built_with)
        found = embedding_fingerprint(spec, weights or manifest["model"].get("weights"))
        if found != manifest["model"].get("fingerprint"):
            raise ModelMismatchError(
                f"{folder} was built with {built_with} as {manifest['model'].get('fingerprint')}, "
                f"but this lookalike and these weights compute {found}: the vectors would not be "
                "comparable. Pass the weights it was built with, or index into a new --collection."
            )
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
                device=self._device, threads=self._threads,
                cache_dir=settings.resolve("cache_dir"),
            )
        return self._embedder

    @property
    def vector_index(self) -> FaissIndex:
        if self._index is None:
            self._index = self._load_index()
        return self._index

    def _load_index(self) -> FaissIndex:
        path = self.path / MAIN_INDEX
        index = (FaissIndex.load(path, self.spec) if path.is_file()
                 else FaissIndex.build(self.spec, self.dim))
        # The store is the source of truth: anything committed after the last save is added now.
        for ids, vectors in self.store.iter_vectors(after_id=index.max_id()):
            index.add(ids, vectors)
        self._tombstones = self.store.tombstones()
        return index

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the writer lock; a second writer gets :class:`CollectionLockedError`."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise CollectionLockedError(
                f"{self.path} is being written by another process (lock file {self.path / LOCK}). "
                "Wait for it to finish; searches keep working meanwhile."
            ) from None
        try:
            yield
        finally:
            lock.release()

    def index(self, paths: Iterable[str | os.PathLike[str]], *, batch_size: int | None = None,
              workers: int | None = None, show_progress: bool | None = None) -> IngestReport:
        """Bring the collection in step with image files and folders (incremental, resumable)."""
        paths = list(paths)
        for p in paths:
            if not os.path.exists(p):
                raise UsageError(f"Path {p} does not exist.")
        with self.writer():
            index = self.vector_index
            ingestor = Ingestor(
                self.store, self.embedder, index, max_pixels=self.max_pixels,
                batch_size=settings.resolve("batch_size", batch_size),
                workers=settings.resolve("workers", workers), checkpoint=self._save_index,
            )
            try:
                report = ingestor.run(paths, show_progress=show_progress)
            finally:
                self._save_index()
            self._tombstones = self.store.tombstones()
            if self._needs_rebuild():
                self.rebuild_index()
            self.manifest["updated"] = _now()
            _write_json(self.path / MANIFEST, self.manifest)
        return report

    def _save_index(self) -> None:
        if self._index is not None:
            self._index.save(self.path / MAIN_INDEX)

    def _needs_rebuild(self) -> bool:
        index = self.vector_index
        grown = self.spec.auto and index.spec.kind != self.spec.for_size(index.ntotal).kind
        return grown or len(self._tombstones) > REBUILD_TOMBSTONE_FRACTION * max(index.ntotal, 1)

    def rebuild_index(self) -> None:
        """Build a fresh index from the stored vectors of active images and swap it in."""
        n = self.store.counts()["active"]
        index = FaissIndex.build(self.spec.for_size(n), self.dim)
        for ids, vectors in self.store.iter_vectors():
            index.add(ids, vectors)
        index.save(self.path / MAIN_INDEX)
        self.store.drop_tombstoned_vectors()
        self._index, self._tombstones = index, set()

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
        index = self.vector_index
        if index.ntotal == 0:
            return []
        banned = self._tombstones | (exclude or set())
        ef = settings.resolve("ef_search", ef)
        scores, ids = index.search(vector[None, :], k, ef_search=ef, exclude=banned)
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
        for name in (MANIFEST, DATABASE, DATABASE + "-wal", MAIN_INDEX):
            file = self.path / name
            if file.exists():
                sizes[name] = file.stat().st_size
        return CollectionInfo(
            path=str(self.path), model=self.model_name, dim=self.dim,
            index_spec=self.spec.text, index_kind=self.vector_index.spec.describe,
            images=counts["active"], failed=counts["failed"], removed=counts["removed"],
            indexed_vectors=self.vector_index.ntotal, bytes_on_disk=sizes,
            created=self.manifest["created"], updated=self.manifest["updated"],
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
