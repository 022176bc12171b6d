"""Phase 2 kept live: a collection's vector index, in step with its store.

:mod:`.contract` declares what callers use (:class:`LiveIndex`) and the catch-up every
implementation shares; :mod:`.local` keeps main + delta over an in-process engine (Faiss,
ScaNN), :mod:`.milvus` a Milvus collection. :func:`open_live` chooses one from the index spec,
once, when a collection opens its index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..index import PCA, IndexSpec
from ..storage import Store
from .contract import CompactionPolicy, CompactionReport, LiveIndex, VerifyReport
from .files import DELTA_INDEX, MAIN_INDEX, file_stamp, remove_stale_temporaries, verify
from .local import MainDeltaIndex
from .milvus import MilvusLiveIndex, claim_milvus, verify_milvus

__all__ = [
    "DELTA_INDEX", "MAIN_INDEX", "CompactionPolicy", "CompactionReport", "LiveIndex",
    "MainDeltaIndex", "MilvusLiveIndex", "VerifyReport", "claim_index", "file_stamp",
    "open_live", "remove_stale_temporaries", "verify_index",
]


def open_live(folder: Path, spec: IndexSpec, dim: int, store: Store, policy: CompactionPolicy,
              *, load: bool = True, projection: PCA | None = None,
              main_is_current: Callable[[], bool] = lambda: True,
              milvus_token: str | None = None) -> LiveIndex:
    """The live index for ``spec``: Milvus when the spec names one, else main + delta files in
    ``folder``. ``load=False`` trusts nothing already built (a rebuild)."""
    if spec.milvus is not None:  # Milvus holds every vector: no files to trust or not
        return MilvusLiveIndex(folder, spec, dim, store, policy, load=load,
                               projection=projection, token=milvus_token)
    return MainDeltaIndex(folder, spec, dim, store, policy, load=load, projection=projection,
                          main_is_current=main_is_current)


def claim_index(spec: IndexSpec, folder: Path, dim: int, milvus_token: str | None) -> None:
    """Reserve what a new index needs outside the collection folder (a Milvus collection,
    refused if it exists already); nothing for index files."""
    if spec.milvus is not None:
        claim_milvus(spec, folder, dim, milvus_token)


def verify_index(folder: Path, spec: IndexSpec, dim: int, store: Store,
                 milvus_token: str | None) -> VerifyReport:
    """Compare the index with the store, without changing anything."""
    if spec.milvus is not None:
        return verify_milvus(spec, folder, dim, store, milvus_token)
    return verify(folder, spec, dim, store)
