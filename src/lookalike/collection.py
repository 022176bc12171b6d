"""The façade: one folder holds a collection (manifest, SQLite store, main and delta indexes).

>>> col = Collection.create("photos.lookalike")
>>> col.index(["~/Pictures"])
>>> col.search("query.jpg", k=10)
[SearchHit(image_id=17, uri='/home/me/Pictures/cat.jpg', score=0.93, ...), ...]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .embedders import Embedder
from .errors import (
    CollectionExistsError,
    CollectionLockedError,
    CorruptCollectionError,
    DecodeError,
    ImageNotFoundError,
    UsageError,
)
from .files import is_upload, remove_quietly, thumbnail, upload_path, write_durably
from .imaging import ImageSource, decode_bytes, load_pixels, to_model_input
from .index import PCA, parse_spec
from .ingest import Ingestor
from .live import (
    DELTA_INDEX,
    MAIN_INDEX,
    CompactionPolicy,
    CompactionReport,
    LiveIndex,
    VerifyReport,
    file_stamp,
    remove_stale_temporaries,
    verify,
)
from .manifest import MANIFEST, new_manifest, now, read_manifest, write_manifest
from .milvus_live import MilvusLiveIndex, claim_milvus, verify_milvus
from .storage import new_store, open_store
from .store import ImageRecord, NewImage
from .types import CollectionInfo, ImageDetails, IngestReport, ReduceReport, SearchHit

DATABASE, LOCK, COMPACT_LOCK = "lookalike.db", ".lock", ".compact.lock"
#: Present while `reduce` switches projections: the index files may belong to either one.
REDUCING = ".reduce-pending"


class Collection:
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

    @property
    def live(self) -> LiveIndex | MilvusLiveIndex:
        """The main and delta indexes, kept in step with the store and with the manifest's
        projection: after a `reduce` in any process they are reloaded on next use."""
        self._sync_manifest()
        live = self._live
        if live is not None and (self._is_current(live) or self._reducing()):
            return live  # while a reduce runs, the old indexes stay right for their projection
        # Another thread may be loading the new indexes: search with the old ones meanwhile.
        if not self._live_lock.acquire(blocking=live is None):
            return live  # type: ignore[return-value]
        try:
            if self._live is live:
                self._replace_live()
            return self._live  # type: ignore[return-value]
        finally:
            self._live_lock.release()

    def _is_current(self, live: LiveIndex | MilvusLiveIndex) -> bool:
        """Whether ``live`` has the manifest's projection and index spec."""
        return self._live_pca == self._pca_file() and live.spec == self.spec

    def _new_live(self, *, load: bool = True) -> tuple[LiveIndex | MilvusLiveIndex, str | None]:
        """Indexes with the manifest's projection, and its PCA file name."""
        name = self._pca_file()
        projection = PCA.load(self.path / name) if name else None
        live: LiveIndex | MilvusLiveIndex
        if self.spec.milvus is not None:  # Milvus holds every vector: no files to trust or not
            live = MilvusLiveIndex(self.path, self.spec, self.dim, self.store, self._policy(),
                                   load=load, projection=projection,
                                   token=settings.resolve("milvus_token"))
        else:
            live = LiveIndex(self.path, self.spec, self.dim, self.store, self._policy(),
                             load=load, projection=projection,
                             main_is_current=lambda: self._main_is_current(name))
        if self._live is not None:
            live.reload_in_background = self._live.reload_in_background
        return live, name

    def _replace_live(self, *, load: bool = True) -> LiveIndex | MilvusLiveIndex:
        # The caller holds _live_lock.
        live, name = self._new_live(load=load)
        self._live, self._live_pca = live, name
        return live

    def _sync_manifest(self) -> None:
        """Re-read the manifest if another process replaced it (one stat when it did not)."""
        stamp = file_stamp(self.path / MANIFEST)
        if stamp != self._manifest_stamp:
            try:
                self.manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CorruptCollectionError(f"Cannot read {self.path / MANIFEST}: {exc}") from None
            self._manifest_stamp = stamp
            self.spec = parse_spec(self.manifest["index"]["spec"])  # `bench --apply` changes it

    def _pca_file(self) -> str | None:
        entry = self.manifest.get("pca")
        return entry["file"] if entry else None

    def _reducing(self) -> bool:
        return (self.path / REDUCING).exists()

    def _main_is_current(self, pca_file: str | None) -> bool:
        # Whether main.index on disk was built with this projection: no reduce under way and
        # none finished since (a new reduce always writes a new PCA file name).
        self._sync_manifest()
        return not self._reducing() and self._pca_file() == pca_file

    @property
    def index_dim(self) -> int:
        """The dimension the index holds: the PCA's after `reduce`, else the model's."""
        self._sync_manifest()
        entry = self.manifest.get("pca")
        return int(entry["dim"]) if entry else self.dim

    @staticmethod
    def _policy() -> CompactionPolicy:
        return CompactionPolicy(
            delta_min=settings.resolve("compact_min_delta"),
            delta_fraction=settings.resolve("compact_delta_fraction"),
            tombstone_fraction=settings.resolve("compact_tombstone_fraction"),
        )

    # -- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the writer lock, waiting up to ``wait`` seconds for a writer in another process
        to finish, then :class:`CollectionLockedError`. Threads of this process take turns."""
        if not self._write_lock.acquire(timeout=max(wait, 60.0)):
            raise CollectionLockedError(f"{self.path} is being written by another thread.")
        try:
            with _file_lock(self.path / LOCK, "being written by another process", wait):
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
        ``engine="ray"`` (or a :class:`lookalike.ray_engine.RayEngine`) decodes and embeds on
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
            from .ray_engine import engine_for

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

    def compact(self, *, wait: bool = True) -> CompactionReport | None:
        """Build a new main index from the stored vectors and swap it in (searches and writers
        carry on meanwhile). With ``wait=False``, returns None if a compaction is running."""
        try:
            with _file_lock(self.path / COMPACT_LOCK, "being compacted by another process"):
                self._sync_manifest()
                live, pca_file = self._live, self._live_pca
                if live is None or pca_file != self._pca_file():
                    # Nothing searches here yet, or with another projection (an interrupted
                    # reduce): build new indexes without loading the old ones, then use them.
                    live, pca_file = self._new_live(load=False)
                    report = live.compact()
                    with self._live_lock:
                        self._live, self._live_pca = live, pca_file
                else:
                    report = live.compact()
                self._finish_interrupted_reduce(pca_file)
                return report
        except CollectionLockedError:
            if wait:
                raise
            return None

    def rebuild(self) -> CompactionReport:
        """Rebuild every index from the stored vectors, ignoring (then replacing) the index files:
        the repair for anything `verify` reports."""
        with _file_lock(self.path / COMPACT_LOCK, "being compacted by another process"):
            self._sync_manifest()
            with self._live_lock:
                live, pca_file = self._replace_live(load=False), self._live_pca
            report = live.compact()
            self._finish_interrupted_reduce(pca_file)
            return report

    def _finish_interrupted_reduce(self, pca_file: str | None) -> None:
        # The caller holds the compaction lock, which a running reduce holds throughout: a
        # marker left now is an interrupted reduce's, and the index files just built use the
        # manifest's projection, so readers may trust them again.
        self._sync_manifest()
        if self._pca_file() == pca_file:
            remove_quietly(self.path / REDUCING)

    def reduce(self, dim: int, *, whiten: bool = False, sample: int = 1_000_000, seed: int = 0,
               wait: float = 0.0) -> ReduceReport:
        """Project the index to ``dim`` dimensions with a PCA learnt from up to ``sample``
        stored vectors (drawn uniformly, seeded), and rebuild it; ``dim=0`` removes the PCA.

        Stored vectors keep the model's full dimension, so this can be redone with another
        ``dim`` at any time. Every vector entering the index and every query goes through the
        PCA and is re-normalised. Other processes switch on their next search; until the new
        index files are written they keep their old ones (a reader that opens meanwhile builds
        exact in-memory indexes instead). An interrupted reduce is finished by the next
        compaction or `rebuild`.
        """
        if dim < 0:
            raise UsageError(f"--dim must be a positive number of dimensions (or 0: off), "
                             f"got {dim}.")
        if sample < 1:
            raise UsageError(f"--sample must be at least 1, got {sample}.")
        with self.writer(wait), _file_lock(self.path / COMPACT_LOCK,
                                           "being compacted by another process", wait):
            before = self._index_bytes()
            dim_before, started = self.index_dim, time.perf_counter()
            pca = None
            if dim:
                pca = PCA.fit(self.store.sample_vectors(sample, seed=seed), dim, whiten=whiten)
            fit_seconds = time.perf_counter() - started
            write_durably(self.path / REDUCING, b"")  # readers stop trusting the index files
            manifest = dict(self.manifest)
            manifest.pop("pca", None)
            if pca is not None:
                name = f"pca-{secrets.token_hex(4)}.npz"  # a new name: tells old readers apart
                pca.save(self.path / name)
                manifest["pca"] = {
                    "dim": pca.dim, "whiten": pca.whiten, "file": name,
                    "trained_on": pca.trained_on, "seed": seed,
                    "explained_variance": round(pca.explained_variance_ratio, 6),
                }
            self.manifest = manifest
            self._touch_manifest()
            remove_quietly(self.path / DELTA_INDEX)  # the old projection's: never load it again
            live, name = self._new_live(load=False)  # this handle searches the old meanwhile
            report = live.compact()
            with self._live_lock:
                self._live, self._live_pca = live, name
            remove_quietly(self.path / REDUCING)
            for stale in self.path.glob("pca-*.npz"):
                if stale.name != self._pca_file():
                    remove_quietly(stale)
        return ReduceReport(
            dim_before=dim_before, dim_after=live.dim, whiten=bool(pca and pca.whiten),
            explained_variance=pca.explained_variance_ratio if pca else None,
            trained_on=pca.trained_on if pca else 0, index_bytes_before=before,
            index_bytes_after=self._index_bytes(), vectors=report.main_vectors,
            fit_seconds=fit_seconds, build_seconds=report.seconds,
        )

    def _index_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.path / MAIN_INDEX, self.path / DELTA_INDEX)
                   if f.is_file())

    def set_index(self, spec: str, *, search: dict[str, int] | None = None) -> CompactionReport:
        """Switch to another index spec (and default search knobs, e.g. ``{"ef_search": 48}``),
        recorded in the manifest, and rebuild the index with it."""
        parsed = parse_spec(spec)
        with self.writer():
            if parsed.milvus is not None and (self.spec.milvus is None
                                              or parsed.milvus.where != self.spec.milvus.where):
                claim_milvus(parsed, self.path, self.index_dim, settings.resolve("milvus_token"))
            self.manifest["index"] = {"spec": parsed.text, "search": dict(search or {})}
            self._touch_manifest()
            self.spec = parsed
            return self.rebuild()

    def search_defaults(self) -> dict[str, int]:
        """The per-call search knobs recorded for this collection (by `lookalike bench --apply`)."""
        return dict(self.manifest["index"].get("search", {}))

    def index_vectors(self) -> np.ndarray:
        """Every active image's vector as the index holds it, (n, dim) float32."""
        chunks = [vectors for _, vectors in self.live.vectors()]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.index_dim), np.float32)

    def verify(self) -> VerifyReport:
        """Check that the index files agree with the store; changes nothing."""
        if self.spec.milvus is not None:
            report = verify_milvus(self.spec, self.path, self.index_dim, self.store,
                                   settings.resolve("milvus_token"))
        else:
            report = verify(self.path, self.spec, self.index_dim, self.store)
        problems = list(report.problems)
        pca_file = self._pca_file()
        if pca_file and not (self.path / pca_file).is_file():
            problems.append(f"the PCA file {pca_file} is missing; run `lookalike reduce` again")
        if self._reducing():
            problems.append("a `lookalike reduce` is under way or was interrupted: the index "
                            "files may not match the PCA")
        return dataclasses.replace(report, problems=tuple(problems))

    def _touch_manifest(self) -> None:
        self.manifest["updated"] = now()
        write_manifest(self.path, self.manifest)

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
        knobs = self.search_defaults()
        if ef is not None or "ef_search" not in knobs:
            knobs["ef_search"] = settings.resolve("ef_search", ef)
        fetch = k
        while True:
            scores, ids = self.live.search(vector[None, :], fetch, exclude=exclude, **knobs)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
            records = self.store.get([i for i, _ in found])
            hits = [
                SearchHit.from_cosine(i, records[i].uri, s, records[i].width, records[i].height)
                for i, s in found if i in records and records[i].status == "active"
            ]
            # Fewer hits than asked while the index had more: an image was removed after this
            # reader last caught up (e.g. during a compaction elsewhere). Look further.
            if len(hits) >= k or len(found) < fetch or fetch >= 16 * k:
                return hits[:k]
            fetch *= 4

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


@contextlib.contextmanager
def _file_lock(path: Path, doing: str, wait: float = 0.0) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait, poll_interval=0.02)
    except Timeout:
        raise CollectionLockedError(
            f"{path.parent} is {doing} (lock file {path}). Wait for it to finish; searches "
            "keep working meanwhile."
        ) from None
    try:
        yield
    finally:
        lock.release()
