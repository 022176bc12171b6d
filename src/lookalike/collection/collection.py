"""The façade: one folder holds a collection (manifest, SQLite store, main and delta indexes).

>>> col = Collection.create("photos.lookalike")
>>> col.index(["~/Pictures"])
>>> col.search("query.jpg", k=10)
[SearchHit(image_id=17, uri='/home/me/Pictures/cat.jpg', score=0.93, ...), ...]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..budget import DecodeBudget
from ..embedders import Embedder
from ..errors import CollectionExistsError, UsageError
from ..imaging import ImageSource
from ..index import IndexSpec, parse_spec
from ..ingest.engines import chosen_engine
from ..live import CompactionReport, LiveIndex, VerifyReport, claim_index
from ..storage import EventWrite, new_store, open_store
from ..types import (
    CollectionInfo,
    ImageDetails,
    IngestReport,
    LearnReport,
    ReduceReport,
    SearchHit,
)
from ..where import Where
from .feeding import Feeder, check_exist
from .files import ImageFile
from .images import DecodeLimits, Images
from .indexes import Indexes
from .info import collection_info
from .manifest import MANIFEST, Manifest, new_manifest, read_manifest, write_manifest
from .metadata import MetadataReport, MetadataRow, Tagger, read_metadata_file
from .searching import QueryHash, Searcher, Within
from .slices import Plan


class Collection:
    """A collection of indexed images on disk. Create it once, open it any number of times."""

    def __init__(self, path: Path, manifest: Manifest, *, weights: str | None = None,
                 runtime: str | None = None, device: str | None = None,
                 threads: int | None = None, precision: str | None = None,
                 max_pixels: int | None = None, max_file_bytes: int | None = None,
                 decode_budget: DecodeBudget | None = None, store: str | None = None) -> None:
        self.path = path
        self.model_name = manifest.model.name
        self.dim = manifest.model.dim
        self._weights = weights or manifest.model.weights
        self._runtime = settings.resolve("runtime", runtime)
        self._device = settings.resolve("device", device)
        self._threads = settings.resolve("threads", threads)
        self._precision = settings.resolve("precision", precision)
        # A server's decodes take their memory from its budget first.
        self.limits = DecodeLimits(settings.resolve("max_pixels", max_pixels),
                                   settings.resolve("max_file_bytes", max_file_bytes),
                                   decode_budget.reserve if decode_budget else None)
        # The manifest says which store; ``store`` (a URI) may move it or carry its password.
        self.store = open_store(manifest.store, folder=path, dim=self.dim, given=store,
                                setting=settings.resolve("store"))
        self._embedder: Embedder | None = None
        self.indexes = Indexes(path, manifest, self.store)
        self.images = Images(path, self.store, self.indexes, self.limits, lambda: self.embedder)
        self._searcher = Searcher(self.store, self.indexes, self.embed, self.model_name)
        self._feeder = Feeder(self.store, self.indexes, self.limits, lambda: self.embedder)
        self._tagger = Tagger(self.store, self.images, self.indexes.writer)

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, model: str | None = None,
               weights: str | None = None, index: str | None = None,
               store: str | None = None, **options: Any) -> Collection:
        """Create an empty collection at ``path`` for ``model`` with index spec ``index``;
        ``store`` is ``sqlite`` (the default) or a ``postgresql://`` URI for its metadata."""
        folder = Path(path).expanduser().absolute()  # uploads are stored by absolute path
        if (folder / MANIFEST).exists():
            raise CollectionExistsError(f"A collection already exists at {folder}.")
        weights = str(Path(weights).expanduser().resolve()) if weights else None
        spec = parse_spec(settings.resolve("index", index))
        manifest = new_manifest(settings.resolve("model", model), weights, spec)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file, not a collection folder: pass a new or "
                             "existing folder to --collection.")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"Cannot make the collection folder {folder}: {exc.strerror}.") from None
        # A Milvus or Qdrant collection is refused if it exists already.
        claim_index(spec, folder, manifest.model.dim, settings.resolve("milvus_token"),
                    qdrant_api_key=settings.resolve("qdrant_api_key"))
        recorded = new_store(settings.resolve("store", store), folder, manifest.model.dim)
        manifest = manifest.replace(store=recorded)  # a URI without the password, or None
        write_manifest(folder, manifest)
        return cls(folder, manifest, weights=weights, store=store, **options)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, model: str | None = None,
             weights: str | None = None, **options: Any) -> Collection:
        """Open an existing collection; ``model``, if given, must be the one that built it."""
        folder = Path(path).expanduser().absolute()  # uploads are stored by absolute path
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
        self.indexes.close()
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

    def writer(self, wait: float = 0.0) -> contextlib.AbstractContextManager[None]:
        """Hold the writer lock, waiting up to ``wait`` seconds for a writer in another process
        to finish, then :class:`CollectionLockedError`. Threads of this process take turns."""
        return self.indexes.writer(wait)

    @property
    def manifest(self) -> Manifest:
        """The manifest as last read (another process may change it: `reduce`, `bench
        --apply`)."""
        return self.indexes.manifest

    @property
    def spec(self) -> IndexSpec:
        return self.indexes.spec

    @property
    def live(self) -> LiveIndex:
        """The live index, in step with the store and the manifest."""
        return self.indexes.live

    def index(self, paths: Iterable[str | os.PathLike[str]], *, batch_size: int | None = None,
              workers: int | None = None, show_progress: bool | None = None,
              remove_missing: bool = True, engine: Any = None,
              ray_address: str | None = None, spark_master: str | None = None,
              wait: float = 0.0, learn: bool = True) -> IngestReport:
        """Bring the collection in step with image files and folders (incremental, resumable).

        ``paths`` may also be objects and prefixes in S3 (``s3://bucket/key``,
        ``s3://bucket/prefix/``), known by ETag and size as files are by time and size.
        Indexed files under ``paths`` that no longer exist are removed unless
        ``remove_missing`` is false. Compacts at the end when the delta or the tombstones have
        grown large.
        ``engine="ray"`` (or a :class:`lookalike.ingest.ray.RayEngine`) decodes and embeds on
        the Ray cluster at ``ray_address`` (default: a local Ray started for the run), with
        ``workers`` embedding actors; ``engine="spark"`` (or a
        :class:`lookalike.ingest.spark.SparkEngine`) on the Spark master ``spark_master``
        (default: a local Spark started for the run), ``workers`` batches at once. Either way the
        vectors are the same as the local engine's. ``wait``: seconds to wait for another
        process's writer before CollectionLockedError. Then, unless ``learn`` is false,
        :meth:`learn_if_due` (the report's ``learned``).
        """
        paths = list(paths)
        check_exist(paths)
        chosen = chosen_engine(engine, ray_address=ray_address, spark_master=spark_master,
                               workers=workers)
        report = self._feeder.files(paths, batch_size=batch_size, workers=workers,
                                    show_progress=show_progress, remove_missing=remove_missing,
                                    engine=chosen, wait=wait)
        learned = self.learn_if_due(wait=wait) if learn else None
        return dataclasses.replace(report, learned=learned) if learned else report

    def sync(self, paths: Iterable[str | os.PathLike[str]]) -> IngestReport:
        """Bring these paths in step: index those that exist, remove those that are gone."""
        return self._feeder.files(list(paths), workers=0, show_progress=False)

    def add(self, paths: Iterable[str | os.PathLike[str]], **options: Any) -> IngestReport:
        """Index files and folders without removing anything else."""
        return self.index(paths, remove_missing=False, **options)

    def import_shards(self, shards: Iterable[str | os.PathLike[str]], *, batch_size: int = 1024,
                      show_progress: bool | None = None, wait: float = 0.0) -> IngestReport:
        """Add the images of shard files `lookalike embed` wrote (Parquet files, folders or
        ``s3://`` prefixes of them, or an open :class:`~lookalike.ingest.shard_import.ShardSet`)
        with their vectors, through the indexing path: images stored unchanged are skipped and
        each batch is one transaction, so importing twice adds nothing and an interrupted import
        resumes. Nothing is removed. ModelMismatchError, before any write, for another model."""
        from ..ingest.shard_import import opened

        with opened(shards) as found:
            found.check(self.manifest.model.fingerprint, self.dim, self.path)
            return self._feeder.shards(found, batch_size=batch_size,
                                       show_progress=show_progress, wait=wait)

    def remove(self, images: Iterable[int | str | os.PathLike[str]], *,
               wait: float = 0.0) -> list[int]:
        """Remove images by id or path; gone from results at once. Returns the ids this call
        removed: one that another remover retired first (after the check that every image is
        indexed) is left out, so of racing removals of one image exactly one reports it.

        Files uploaded into the collection are deleted too; indexed files elsewhere never are.
        """
        return self.images.remove(images, wait=wait)

    def apply_events(self, batch: EventWrite) -> tuple[list[int], list[int]]:
        """Commit what a batch of stream events does (the caller holds :meth:`writer`) and bring
        the live index in step: searchable when this returns. The new ids and those retired."""
        written = self.store.apply_events(batch)
        self.indexes.committed()
        return written

    def add_bytes(self, data: bytes, *, metadata: dict[str, Any] | None = None,
                  wait: float = 10.0) -> tuple[ImageDetails, bool]:
        """Store an uploaded image inside the collection, embed it and make it searchable.

        Returns the image and whether it is new: identical bytes uploaded before give back that
        image (with ``metadata`` replacing its old metadata, if given). The image is durable and
        searchable when this returns. Raises DecodeError for bytes that are not a usable image.
        """
        return self.images.add_bytes(data, metadata=metadata, wait=wait)

    def apply_metadata(self, rows: str | os.PathLike[str] | list[MetadataRow], *,
                       wait: float = 10.0) -> MetadataReport:
        """Replace the metadata of the images a ``.jsonl`` or ``.csv`` file (or its rows, see
        :func:`.metadata.read_metadata_file`) names, in one transaction."""
        found = rows if isinstance(rows, list) else read_metadata_file(rows)
        return self._tagger.apply(found, wait=wait)

    def tag(self, images: int | str | os.PathLike[str] | Iterable[int | str | os.PathLike[str]],
            values: dict[str, Any], *, remove: Iterable[str] = (),
            wait: float = 10.0) -> list[ImageDetails]:
        """Merge ``values`` into the metadata of images (an id or path, or several), less the
        ``remove`` keys; ImageNotFoundError, before any change, if one is not indexed."""
        many = [images] if isinstance(images, (int, str, os.PathLike)) else images
        return self._tagger.tag(many, values, remove, wait=wait)

    def details(self, image_id: int) -> ImageDetails:
        """An indexed image's location, size and metadata."""
        return self.images.details(image_id)

    def open_file(self, image_id: int) -> ImageFile:
        """The file of an indexed image, open, while it is still the file that was indexed:
        never through a symlink pointed elsewhere (see :func:`.files.open_indexed`). The caller
        closes it. Raises ImageFileError when the file is gone or has changed."""
        return self.images.open_file(image_id)

    def thumbnail(self, image_id: int, side: int = 256) -> bytes:
        """A small JPEG of an indexed image (cached in the collection where it can be), made
        from its file as :meth:`open_file` opens it."""
        return self.images.thumbnail(image_id, side)

    # -- searching --------------------------------------------------------------------------

    def search(self, image: ImageSource | Any, k: int = 10, *, ef: int | None = None,
               qe: int | None = None, where: str | Where | None = None,
               max_per: str | tuple[str, int] | None = None,
               collapse: bool = False) -> list[SearchHit]:
        """The ``k`` indexed images most similar to ``image`` (a path, an ``s3://`` URI, file
        bytes or a PIL image), each with its ``match`` label.

        ``where`` keeps images whose fields pass a filter expression (see
        :mod:`lookalike.where`), e.g. ``"album = trip and taken >= 2021"``; ``max_per``
        (``"KEY=N"``) keeps at most N per value of a field; ``collapse`` folds copies of a
        better hit into its ``copies``. A bad expression raises WhereError (a UsageError)."""
        return self._searcher.search(image, k, ef=ef, qe=qe,
                                     within=Within.of(where, max_per, collapse))

    def search_similar(self, image_id: int, k: int = 10, *, ef: int | None = None,
                       qe: int | None = None, where: str | Where | None = None,
                       max_per: str | tuple[str, int] | None = None,
                       collapse: bool = False) -> list[SearchHit]:
        """Look-alikes of an indexed image, from its stored vector (the image itself excluded);
        ``where``, ``max_per`` and ``collapse`` as :meth:`search`."""
        return self._searcher.search_similar(image_id, k, ef=ef, qe=qe,
                                             within=Within.of(where, max_per, collapse))

    def search_vector(self, vector: np.ndarray, k: int = 10, *, ef: int | None = None,
                      qe: int | None = None, exclude: set[int] | None = None,
                      where: str | Where | None = None,
                      max_per: str | tuple[str, int] | None = None,
                      collapse: bool = False, query_hash: QueryHash = None
                      ) -> list[SearchHit]:
        """The ``k`` images nearest to an embedding, ranked best first (see
        :meth:`.searching.Searcher.search_vector` for how query expansion ranks them);
        ``where``, ``max_per`` and ``collapse`` as :meth:`search`; ``query_hash``, the content
        hash of the query's file (or a function computing it, called only for a hit close
        enough to be that file), labels a hit with the same bytes ``exact``."""
        return self._searcher.search_vector(vector, k, ef=ef, qe=qe, exclude=exclude,
                                            within=Within.of(where, max_per, collapse),
                                            query_hash=query_hash)

    def search_plan(self, where: str | Where) -> Plan:
        """How a search within ``where`` would run now: post-filter, pre-filter or exact,
        and the share of images expected to pass (see :mod:`.slices`)."""
        return self._searcher.plan(where)

    def embed(self, images: Iterable[ImageSource | Any]) -> np.ndarray:
        """Embed images (paths, file bytes or PIL images) exactly as indexing does."""
        pixels = [self.model_input(image) for image in images]
        if not pixels:
            return np.zeros((0, self.dim), np.float32)
        return self.embedder.embed_pixels(np.stack(pixels))

    def model_input(self, image: ImageSource | Any) -> np.ndarray:
        """``image`` (a path, file bytes or PIL image) decoded to the model's input, within this
        collection's limits and decode budget."""
        return self.images.model_input(image)

    def find(self, uri: str | os.PathLike[str]) -> int | None:
        """The id of the indexed image at this path, if there is one."""
        return self.images.find(uri)

    # -- the index ----------------------------------------------------------------------------

    def compact(self, *, wait: bool = True) -> CompactionReport | None:
        """Build a new main index from the stored vectors and swap it in (searches and writers
        carry on meanwhile). With ``wait=False``, returns None if a compaction is running."""
        return self.indexes.compact(wait=wait)

    def rebuild(self) -> CompactionReport:
        """Rebuild the index from the stored vectors, ignoring the index files: the repair for
        what `verify` reports, when the store itself is sound (else CorruptCollectionError)."""
        return self.indexes.rebuild()

    def verify(self) -> VerifyReport:
        """Check that the index agrees with the store and the store with itself."""
        return self.indexes.verify()

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
        return self.indexes.reduce(dim, whiten=whiten, sample=sample, seed=seed, wait=wait)

    def learn(self, *, dim: int | None = None, pairs: int | None = None, seed: int = 0,
              off: bool = False, wait: float = 0.0, workers: int | None = None) -> LearnReport:
        """Learn this collection's invariances from ``pairs`` of its images (setting
        ``learn_pairs``) and edited copies of them, and make the index hold vectors projected
        with them; ``dim`` also reduces the dimension, ``off`` removes the projection and stops
        index and compact learning by themselves. Like :meth:`reduce`: the stored vectors keep
        the model's, and other processes switch on their next search. See
        :mod:`lookalike.collection.learning`."""
        from .learning import learn

        return learn(self, dim=dim, pairs=pairs, seed=seed, off=off, wait=wait, workers=workers)

    def learn_if_due(self, *, wait: float = 0.0) -> LearnReport | None:
        """:meth:`learn` if the collection has reached ``learn_min_images`` images or doubled
        since it last learnt (what index and compact run), else None."""
        from .learning import learn_if_due

        return learn_if_due(self, wait=wait)

    def set_index(self, spec: str, *, search: dict[str, int] | None = None) -> CompactionReport:
        """Switch to another index spec (and default search knobs, e.g. ``{"ef_search": 48}``),
        recorded in the manifest, and rebuild the index with it."""
        return self.indexes.set_index(spec, search=search)

    def search_defaults(self) -> dict[str, int]:
        """The per-call search knobs recorded for this collection (by `lookalike bench --apply`)."""
        return self.indexes.search_defaults()

    @property
    def index_dim(self) -> int:
        """The dimension the index holds: the PCA's after `reduce`, else the model's."""
        return self.indexes.index_dim

    def index_vectors(self) -> np.ndarray:
        """Every active image's vector as the index holds it, (n, dim) float32."""
        return self.indexes.index_vectors()

    def serve_upkeep(self, *, save_delta: bool = False) -> bool:
        """What a long-running server does now and then (from one background thread): follow
        other processes' writes and compactions without making searches wait, cache the delta
        if asked (skipped while another process writes). Returns whether a compaction is due."""
        self.indexes.reload_in_background()
        if save_delta:
            self.indexes.save_delta(wait=0.5)
        return self.indexes.upkeep()

    # -- reporting --------------------------------------------------------------------------

    def info(self) -> CollectionInfo:
        """Counts, index, projection, store and bytes on disk."""
        return collection_info(self)
