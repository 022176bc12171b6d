"""Qdrant Edge as the vector index: Qdrant's own engine in this process (``qdrant-edge:`` specs),
one shard of unit vectors under the store's ids.

The shard is the folder ``DIR/NAME`` (relative: inside the collection folder): Qdrant's segments
and write-ahead log, and ``lookalike.json``, which holds what a Qdrant server keeps in the
collection's metadata: ``index`` (the parameters it was built with) and ``generation`` (every
store change up to it is in the shard). The generation is recorded at checkpoints, after the
shard has flushed the writes it stands for, and by rename, so it is never ahead of them; between
checkpoints it lags, which costs the next process to open the shard a re-application of the
changes since (upserts and deletes: applying one twice changes nothing). An update is in the
write-ahead log once it returns: a process killed with SIGKILL right after lost none.

Qdrant Edge builds HNSW graphs only when asked: :meth:`QdrantEdgeIndex.checkpoint` (which
writers call now and then) runs its optimizers, which index a segment once it holds
``indexing_threshold`` KB of vectors (until then that segment is searched exhaustively) and
vacuum deleted points.

The write-ahead log is locked by the process that opened it: Qdrant Edge serves one process at
a time. In one process, every client of a folder shares its open shard.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import weakref
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CollectionLockedError,
    CorruptCollectionError,
    IndexUnavailableError,
    LookalikeError,
)
from .database_client import DatabaseClient
from .qdrant_index import PAGE, QdrantState, chunks, qdrant_module, search_batches, search_ef
from .spec import IndexSpec

LOOKALIKE_FILE = "lookalike.json"
CONFIG_FILE = "edge_config.json"  # Qdrant Edge's own: the vector size and distance

_shards_lock = threading.Lock()
_shards: dict[str, _Shared] = {}  # shard folder -> its open shard, in this process


class _Shared:
    """One folder's shard, opened once per process and shared by every client of it."""

    def __init__(self) -> None:
        self.shard: Any = None  # an EdgeShard, once created or loaded
        self.users = 0
        self.lock = threading.Lock()  # one load, create or drop at a time
        self.optimizing = threading.Lock()  # one optimizer run at a time


class QdrantEdgeIndex(DatabaseClient):
    """A client for one Qdrant Edge shard (which may not exist yet: see :meth:`create`)."""

    engine = "Qdrant"
    embedded = True  # this process is the shard's only reader and writer

    def __init__(self, spec: IndexSpec, *, base: Path | None = None) -> None:
        """The shard ``spec`` names; a relative folder is under ``base``."""
        if spec.qdrant is None or spec.qdrant.edge_dir is None:
            raise ValueError(f"{spec.text!r} is not a Qdrant Edge spec")
        self.spec = spec
        self.target = spec.qdrant
        self.where = spec.qdrant.where
        self._edge = qdrant_module("qdrant_edge")
        path = spec.embedded_data(base or Path())
        assert path is not None  # a Qdrant Edge spec, checked above
        self.path = path
        self._dim: int | None = None
        self._pending: int | None = None  # a generation noted, not yet recorded
        with _shards_lock:
            self._shared = _shards.setdefault(str(self.path), _Shared())
            self._shared.users += 1
        self._release = weakref.finalize(self, _close, str(self.path))

    def close(self) -> None:
        """Record the generation noted last (see :meth:`checkpoint`), and let go of the shard."""
        try:
            self.checkpoint()
        finally:
            self._release()

    @property
    def _shard(self) -> Any:
        """The open shard, loaded on first use."""
        shared = self._shared
        if shared.shard is None:
            with shared.lock:
                if shared.shard is None:
                    if not self.exists():
                        raise IndexUnavailableError(
                            f"The Qdrant Edge shard {self.path} ({self.where}) does not exist. "
                            "Run `lookalike rebuild` to make it from the stored vectors.")
                    shared.shard = self._call("open", lambda: self._edge.EdgeShard.load(
                        str(self.path)))
        return shared.shard

    # -- the shard ---------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    def state(self) -> QdrantState:
        """The existing shard's dimension, lookalike entries and size."""
        try:
            vectors = json.loads((self.path / CONFIG_FILE).read_text())["vectors"]
            dim = int(vectors[""]["size"]) if "" in vectors else 0  # 0: not lookalike's
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptCollectionError(
                f"Cannot read the Qdrant Edge shard's {self.path / CONFIG_FILE}: {exc}. Run "
                "`lookalike rebuild` to make the shard again from the stored vectors.") from None
        recorded = self._recorded()
        generation = recorded.get("generation")
        self._dim = dim
        return QdrantState(dim, recorded.get("index"),
                           None if generation is None else int(generation), self.count())

    def create(self, dim: int) -> None:
        """Create the shard with this spec's index (an exact one builds no graph)."""
        edge, exact = self._edge, self.target.index_type == "exact"
        config = edge.EdgeConfig(
            vectors=edge.EdgeVectorParams(size=dim, distance=edge.Distance.Dot),
            hnsw_config=edge.HnswIndexConfig(m=0 if exact else self.spec.m,
                                             ef_construct=self.spec.ef_construction,
                                             full_scan_threshold=self.target.threshold),
            optimizers=edge.EdgeOptimizersConfig(indexing_threshold=self.target.threshold))
        with self._shared.lock:
            # The lookalike entries first: a shard without them would be "not lookalike's".
            self._record(index=self.index_text, generation=-1)
            self._shared.shard = self._call(
                "create", lambda: edge.EdgeShard.create(str(self.path), config))
        self._dim = dim

    def drop(self) -> None:
        with self._shared.lock:
            if self._shared.shard is not None:
                self._shared.shard.close()
                self._shared.shard = None
            shutil.rmtree(self.path, ignore_errors=True)
        self._dim = None

    def set_generation(self, generation: int) -> None:
        """Note that every store change up to ``generation`` is in the shard; the next
        :meth:`checkpoint` records it."""
        self._pending = int(generation)

    def checkpoint(self) -> None:
        """Build the graphs that are due, flush, then record the generation noted last: never
        ahead of the data. Writers call this now and then (``save_delta``), and :meth:`close`
        does: a flush takes about 0.1 s however little changed (20,000 x 256-d, measured),
        too slow for every catch-up, and a record that lags costs a re-application on open."""
        if self._pending is None:
            return
        generation, self._pending = self._pending, None
        self.compact()
        self._record(**{**self._recorded(), "generation": generation})

    def flush(self) -> None:
        """Write every change to the segments."""
        self._call("flush", self._shard.flush)

    def compact(self) -> None:
        """Index the segments that passed the indexing threshold, vacuum deleted points, flush.
        Qdrant Edge runs no optimizer in the background: until a segment's graph is built, it
        is searched exhaustively (right, but slower)."""
        with self._shared.optimizing:
            self._call("optimize", self._shard.optimize)
        self.flush()

    def wait_indexed(self) -> None:
        """Build every graph that is due now."""
        with self._shared.optimizing:
            self._call("optimize", self._shard.optimize)

    # -- contents ----------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._call("count", lambda: self._shard.count(
            self._edge.CountRequest(exact=True))))

    @property
    def ntotal(self) -> int:
        return self.count()

    def in_graphs(self) -> int:
        """How many vectors are in segments with an HNSW graph (the rest are scanned)."""
        return int(self._call("describe", lambda: self._shard.info().indexed_vectors_count))

    def ids(self, upto: int = 0) -> np.ndarray:
        """Every id the shard holds, sorted (``upto`` is for the protocol)."""
        del upto
        found: list[int] = []
        offset = None
        while True:
            request = self._edge.ScrollRequest(offset=offset, limit=PAGE, with_payload=False,
                                               with_vector=False)
            records, offset = self._call("list the points of",
                                         lambda r=request: self._shard.scroll(r))
            found += [int(r.id) for r in records]
            if offset is None:
                return np.unique(np.asarray(found, np.int64))

    # -- writing -----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, *, replace: bool = True) -> None:
        """Write (upsert) vectors under ids; ``replace`` changes nothing, Qdrant upserts."""
        del replace
        edge = self._edge
        for id_list, vector_list in chunks(ids, vectors):
            points = [edge.Point(i, v) for i, v in zip(id_list, vector_list, strict=True)]
            operation = edge.UpdateOperation.upsert_points(points)
            self._call("write to", lambda o=operation: self._shard.update(o))

    def delete(self, ids: Iterable[int]) -> None:
        wanted = sorted({int(i) for i in ids})
        for start in range(0, len(wanted), PAGE):
            operation = self._edge.UpdateOperation.delete_points(wanted[start:start + PAGE])
            self._call("delete from", lambda o=operation: self._shard.update(o))

    # -- searching ---------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, ef_search: int | None = None,
               nprobe: int | None = None, k_factor: int | None = None,
               leaves: int | None = None, exclude: Collection[int] = (),
               allowed: np.ndarray | None = None,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; missing results have id -1.
        ``ef_search``, ``allowed`` and ``exact`` as in
        :meth:`lookalike.index.qdrant_index.QdrantIndex.search`."""
        del nprobe, k_factor, leaves, exact  # allowed ids are always compared exactly
        edge = self._edge
        banned = {int(i) for i in exclude}
        must = ([edge.HasIdCondition(set(np.asarray(allowed, np.int64).tolist()))]
                if allowed is not None else None)
        must_not = [edge.HasIdCondition(banned)] if banned else None
        where = edge.Filter(must=must, must_not=must_not) if must or must_not else None

        def search(batch: np.ndarray, limit: int) -> list[list[Any]]:
            ef = None if allowed is not None else search_ef(self.spec, ef_search, limit)
            params = (edge.SearchParams(exact=True) if ef is None
                      else edge.SearchParams(hnsw_ef=ef))
            request = edge.QueryBatchRequest([
                edge.QueryRequest(limit=limit, query=edge.Query.Nearest(q.tolist()),
                                  params=params, filter=where, with_payload=False,
                                  with_vector=False) for q in batch])
            return list(self._call("search", lambda: self._shard.query_batch(request)))

        return search_batches(queries, self.dim, k, search)

    # -- lookalike's entries, and errors -----------------------------------------------------

    def _recorded(self) -> dict[str, Any]:
        try:
            recorded = json.loads((self.path / LOOKALIKE_FILE).read_text())
        except FileNotFoundError:
            return {}  # a shard lookalike did not create
        except (OSError, ValueError) as exc:
            raise CorruptCollectionError(
                f"Cannot read {self.path / LOOKALIKE_FILE}: {exc}. Run `lookalike rebuild`."
            ) from None
        return recorded if isinstance(recorded, dict) else {}

    def _record(self, **entries: Any) -> None:
        """Replace ``lookalike.json`` durably (a reader sees the old file or the new one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{LOOKALIKE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(entries, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path / LOOKALIKE_FILE)

    def _call(self, doing: str, call: Any) -> Any:
        """Run a Qdrant Edge call; its failures (plain ``Exception``s) become one error."""
        try:
            return call()
        except LookalikeError:
            raise  # from a nested call: already says what to do
        except Exception as exc:  # noqa: BLE001  qdrant_edge raises nothing more specific
            message = str(exc)
            if "WouldBlock" in message:  # the write-ahead log is locked by another process
                raise CollectionLockedError(
                    f"The Qdrant Edge shard {self.path} ({self.where}) is open in another "
                    "process: Qdrant Edge serves one process at a time. Stop that process "
                    "(e.g. `lookalike serve`) first, or keep the index on a Qdrant server "
                    "(--index qdrant://HOST:6333/NAME)."
                ) from None
            raise IndexUnavailableError(
                f"Cannot {doing} the Qdrant Edge shard {self.path} ({self.where}): {message}."
            ) from None


def _close(path: str) -> None:
    with _shards_lock:
        shared = _shards[path]
        shared.users -= 1
        if shared.users:
            return
        del _shards[path]
    if shared.shard is not None:  # the last client in this process: unlock the folder
        shared.shard.close()
