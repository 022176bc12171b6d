"""How images come into a collection through an :class:`~lookalike.ingest.Ingestor`: as its one
writer, the delta saved after each run (and now and then during a long one), compaction when due.
Owned by :class:`lookalike.Collection`, which feeds folders, objects and shard files through it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .. import settings
from ..embedders import Embedder
from ..errors import UsageError
from ..ingest import Ingestor, exists
from ..ingest.engines import engine_source
from ..objects import ObjectURI, is_object_uri
from ..storage import Store
from ..types import IngestReport
from .images import DecodeLimits
from .indexes import Indexes


def check_exist(paths: Sequence[str | os.PathLike[str]]) -> None:
    """UsageError naming the first path, object or prefix that does not exist."""
    for path in paths:
        if exists(path):
            continue
        if not is_object_uri(path):
            raise UsageError(f"Path {path} does not exist.")
        if ObjectURI.parse(str(path)).is_prefix:
            raise UsageError(f"There is no object under {path}: check the bucket and prefix.")
        raise UsageError(f"There is no object {path}; for the objects under it as a prefix, end "
                         f"it with a slash: {path}/")


class Feeder:
    """Runs ingestion into one collection's store and indexes."""

    def __init__(self, store: Store, indexes: Indexes, limits: DecodeLimits,
                 embedder: Callable[[], Embedder]) -> None:
        self.store = store
        self.indexes = indexes
        self.limits = limits
        self._embedder = embedder  # loaded on first use

    def files(self, paths: list[str | os.PathLike[str]], *, batch_size: int | None = None,
              workers: int | None = None, show_progress: bool | None = None,
              remove_missing: bool = True, engine: Any = None,
              wait: float = 0.0) -> IngestReport:
        """Index files, folders and objects with ``engine`` (see `Collection.index`)."""
        batch_size = settings.resolve("batch_size", batch_size)
        source = engine_source(engine, self._embedder(), batch_size=batch_size,
                               max_pixels=self.limits.max_pixels,
                               max_bytes=self.limits.max_file_bytes)
        ingestor = Ingestor(
            self.store, self._embedder(), self.indexes.committed,
            max_pixels=self.limits.max_pixels, max_bytes=self.limits.max_file_bytes,
            batch_size=batch_size, workers=settings.resolve("workers", workers),
            checkpoint=self._checkpoint, source=source,
        )
        return self._feed(lambda: ingestor.run(paths, remove_missing=remove_missing,
                                               show_progress=show_progress), wait)

    def shards(self, found: Any, *, batch_size: int, show_progress: bool | None,
               wait: float) -> IngestReport:
        """Add the images of an open, checked :class:`~lookalike.ingest.shard_import.ShardSet`."""
        source = found.source(batch_size)
        ingestor = Ingestor(self.store, self._embedder(), self.indexes.committed,
                            max_pixels=self.limits.max_pixels, batch_size=batch_size,
                            checkpoint=self._checkpoint, source=source)
        return self._feed(lambda: ingestor.run_listed(source.files,
                                                      show_progress=show_progress), wait)

    def _feed(self, run: Callable[[], IngestReport], wait: float) -> IngestReport:
        """``run`` an Ingestor as this collection's writer, then save the delta (even when it
        fails) and compact if that is due."""
        with self.indexes.image_writer(wait):
            try:
                report = run()
            finally:
                self.indexes.live.save_delta()
            self.indexes.touch()
        if self.indexes.live.needs_compaction():
            self.indexes.compact(wait=False)
        return report

    def _checkpoint(self) -> None:
        # Called by long indexing runs now and then: bound the work a crash would redo on open,
        # and keep the delta small enough to stay fast.
        live = self.indexes.live
        live.save_delta()
        if live.needs_compaction():
            self.indexes.compact(wait=False)
