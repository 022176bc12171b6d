"""Phase 2 kept live: a collection's vector index, in step with its store.

:mod:`.contract` declares what callers use (:class:`LiveIndex`) and the catch-up every
implementation shares; :mod:`.local` keeps main + delta over an in-process engine (Faiss,
ScaNN), :mod:`.database` a vector database's collection (Milvus, Qdrant). :func:`open_live`
chooses one from the index spec, once, when a collection opens its index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..index import IndexSpec, Projection
from ..index.milvus_index import MilvusIndex
from ..index.qdrant_edge import QdrantEdgeIndex
from ..index.qdrant_index import QdrantIndex
from ..storage import Store
from .contract import CompactionPolicy, CompactionReport, LiveIndex, VerifyReport
from .database import DatabaseLiveIndex, VectorDatabase, claim_database, verify_database
from .files import DELTA_INDEX, MAIN_INDEX, file_stamp, remove_stale_temporaries, verify
from .local import MainDeltaIndex

__all__ = [
    "DELTA_INDEX", "MAIN_INDEX", "CompactionPolicy", "CompactionReport", "DatabaseLiveIndex",
    "LiveIndex", "MainDeltaIndex", "VerifyReport", "claim_index", "file_stamp", "open_live",
    "remove_stale_temporaries", "verify_index",
]


def open_live(folder: Path, spec: IndexSpec, dim: int, store: Store, policy: CompactionPolicy,
              *, load: bool = True, projection: Projection | None = None,
              main_is_current: Callable[[], bool] = lambda: True,
              milvus_token: str | None = None, qdrant_api_key: str | None = None) -> LiveIndex:
    """The live index for ``spec``: a Milvus or Qdrant collection when the spec names one, else
    main + delta files in ``folder``. ``load=False`` trusts nothing already built (a rebuild)."""
    database = _database(spec, folder, milvus_token, qdrant_api_key)
    if database is not None:  # the database holds every vector: no files to trust or not
        return DatabaseLiveIndex(database, spec, dim, store, policy, load=load,
                                 projection=projection)
    return MainDeltaIndex(folder, spec, dim, store, policy, load=load, projection=projection,
                          main_is_current=main_is_current)


def claim_index(spec: IndexSpec, folder: Path, dim: int, milvus_token: str | None, *,
                qdrant_api_key: str | None = None) -> None:
    """Reserve what a new index needs outside the collection folder (a Milvus or Qdrant
    collection, refused if it exists already); nothing for index files."""
    database = _database(spec, folder, milvus_token, qdrant_api_key)
    if database is not None:
        claim_database(database, dim)


def verify_index(folder: Path, spec: IndexSpec, dim: int, store: Store,
                 milvus_token: str | None, *, qdrant_api_key: str | None = None) -> VerifyReport:
    """Compare the index with the store, without changing anything."""
    database = _database(spec, folder, milvus_token, qdrant_api_key)
    if database is not None:
        return verify_database(database, dim, store)
    return verify(folder, spec, dim, store)


def _database(spec: IndexSpec, folder: Path, milvus_token: str | None,
              qdrant_api_key: str | None) -> VectorDatabase | None:
    """A client for the collection ``spec`` names (an embedded one's data relative to
    ``folder``); None when index files hold the vectors."""
    if spec.milvus is not None:
        return MilvusIndex(spec, base=folder, token=milvus_token)
    if spec.qdrant is not None and spec.qdrant.is_edge:
        return QdrantEdgeIndex(spec, base=folder)
    if spec.qdrant is not None:
        return QdrantIndex(spec, api_key=qdrant_api_key)
    return None
