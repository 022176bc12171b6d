"""What a collection reports about itself: `Collection.info`, `lookalike info`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from ..live import DELTA_INDEX, MAIN_INDEX
from ..storage import SQLITE_FILE
from ..types import CollectionInfo
from .manifest import MANIFEST

if TYPE_CHECKING:
    from .collection import Collection


def _disk_bytes(file: Path) -> int:
    """The bytes ``file`` takes on disk: engines allocate sparse files ahead of their data."""
    stat = file.stat()
    return min(stat.st_size, stat.st_blocks * 512)


def collection_info(col: Collection) -> CollectionInfo:
    """What `Collection.info` (`lookalike info`) reports."""
    counts = col.store.counts()
    sizes = {}
    manifest = col.manifest
    pca_file = manifest.pca.file if manifest.pca else None
    for name in (MANIFEST, SQLITE_FILE, SQLITE_FILE + "-wal", MAIN_INDEX, DELTA_INDEX,
                 *([pca_file] if pca_file else [])):
        file = col.path / name
        if file.exists():
            sizes[name] = file.stat().st_size
    embedded = col.spec.embedded_data(col.path)  # Milvus Lite's file, Qdrant Edge's shard
    if embedded is not None and embedded.exists():
        files = [embedded] if embedded.is_file() else embedded.rglob("*")
        sizes[str(embedded.relative_to(col.path)) if embedded.is_relative_to(col.path)
              else str(embedded)] = sum(_disk_bytes(f) for f in files if f.is_file())
    live = col.live
    live.refresh()
    return CollectionInfo(
        path=str(col.path), model=col.model_name, dim=col.dim,
        index_spec=col.spec.text, index_kind=live.main_kind,
        images=counts["active"], failed=counts["failed"], removed=counts["removed"],
        main_vectors=live.main_vectors, delta_vectors=live.delta_vectors,
        tombstones=len(live.tombstones), bytes_on_disk=sizes,
        created=manifest.created, updated=manifest.updated, index_dim=live.dim,
        pca=dataclasses.asdict(manifest.pca) if manifest.pca else None,
        learn=manifest.learn, store=manifest.store or "sqlite",
    )
