"""The server's state: the collection, the query batcher, readiness, and background upkeep.

Loading happens in a thread at start-up, so /healthz answers at once and /readyz says when the
model and index are in memory; with several worker processes each loads before it starts
accepting connections instead, so no request reaches a worker that is still loading.

Upkeep runs in another thread: it loads a main index that a compaction swapped in (searches go on
with the old one meanwhile), starts a compaction in a separate low-priority process when the
delta has grown past the policy, and caches the delta.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from typing import Any

import numpy as np

from ..budget import DecodeBudget
from ..collection import Collection
from ..collection.background import BackgroundCompaction
from ..errors import LookalikeError
from ..queues import open_source
from ..serverless import EmbedResult, embed_bytes
from ..stream import Consumer
from .batching import QueryBatcher
from .config import ServeConfig
from .duplicates import Screening
from .errors import ApiError
from .middleware import Latencies

log = logging.getLogger("lookalike.server")
UPKEEP_SECONDS = 1.0
SAVE_DELTA_SECONDS = 60.0
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.latencies = Latencies()
        self.started = time.time()
        self.load_seconds: float | None = None
        self.load_error: str | None = None
        self._collection: Collection | None = None
        self._batcher: QueryBatcher | None = None
        self._stop = threading.Event()
        self._compaction = BackgroundCompaction(config.collection)
        self._threads: list[threading.Thread] = []
        self._consumer: Consumer | None = None
        self.consume_error: str | None = None
        self.screening: Screening | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        _unmap_large_buffers()
        if not self.config.background_load:
            self._load()  # this process takes no connection before it can answer them all
            return
        loader = threading.Thread(target=self._load, name="lookalike-load", daemon=True)
        loader.start()
        self._threads.append(loader)

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            # Every worker process reserves its decodes from the same budget (one folder).
            budget = DecodeBudget(self.config.decode_memory_bytes, wait=self.config.decode_wait)
            col = Collection.open(self.config.collection, decode_budget=budget,
                                  **self.config.runtime)
            embedder = col.embedder
            embedder.embed_pixels(np.zeros((1, *self._input_shape(embedder)), np.uint8))
            if self.config.batching:
                self._batcher = QueryBatcher(embedder)
                # The batcher has Embedder's interface (duck-typed), not its class.
                col.embedder = self._batcher  # type: ignore[assignment]
            if self.config.screen_against:
                self.screening = Screening(self.config.screen_against,
                                           self.config.screen_action, self.config.runtime)
            col.serve_upkeep()  # from now on new main index files load in the upkeep thread
            self._collection = col
        except Exception as exc:  # shown by /readyz and the log; the process keeps answering
            self.load_error = str(exc)
            log.error("Cannot load the collection: %s", exc, exc_info=exc)
            return
        self.load_seconds = time.perf_counter() - started
        upkeep = threading.Thread(target=self._upkeep, name="lookalike-upkeep", daemon=True)
        upkeep.start()
        self._threads.append(upkeep)
        if self.config.consume:
            consume = threading.Thread(target=self._consume, args=(col, self.config.consume),
                                       name="lookalike-consume", daemon=True)
            consume.start()
            self._threads.append(consume)

    @staticmethod
    def _input_shape(embedder: Any) -> tuple[int, int, int]:
        side = embedder.preprocess.size
        return (side, side, 3)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        col = self._collection
        if col is not None:
            col.serve_upkeep(save_delta=True)
            col.close()
        if self._batcher is not None:
            self._batcher.close()
        if self.screening is not None:
            self.screening.close()

    @property
    def collection(self) -> Collection:
        """The loaded collection; a 503 while the server is still starting."""
        if self._collection is None:
            message = (f"Cannot load the collection: {self.load_error}" if self.load_error
                       else "The server is still loading the model and index; retry shortly.")
            raise ApiError(503, "not_ready", message, {"Retry-After": "2"})
        return self._collection

    def embed(self, data: bytes) -> EmbedResult:
        """The embedding of an uploaded image by the served model, decoded within the budget
        and batched with the searches' model calls."""
        col = self.collection
        return embed_bytes(data, col.embedder, max_pixels=col.limits.max_pixels,
                           reserve=col.limits.reserve)

    # -- consuming a queue (serve --consume) -------------------------------------------------

    def _consume(self, col: Collection, spec: str) -> None:
        """Consume the queue until the server stops, whatever happens to it meanwhile: while it
        cannot be opened (unreachable, deleted, not yet made) or fails, try again, backing off;
        searches go on, and /stats says why. The upkeep thread saves the delta and compacts."""
        wait = 1.0
        stats = None
        while not self._stop.is_set():
            try:
                source = open_source(spec)
            except LookalikeError as exc:
                self._consume_failed(spec, exc, wait)
                wait = min(wait * 2, 30.0)
                continue
            consumer = Consumer(col, source, batch_size=self.config.consume_batch_size,
                                max_attempts=self.config.consume_max_attempts,
                                allow_paths=self.config.consume_allow_paths,
                                upkeep_seconds=None, stats=stats, log=log.warning)
            self._consumer, stats, self.consume_error = consumer, consumer.stats, None
            try:
                consumer.run(self._stop)
                wait = 1.0
            except Exception as exc:  # consuming must outlive a bad moment, as upkeep does
                self._consume_failed(spec, exc, wait)
                wait = min(wait * 2, 30.0)
            finally:
                source.close()

    def _consume_failed(self, spec: str, exc: Exception, wait: float) -> None:
        self.consume_error = str(exc)
        log.warning("Cannot consume %s (trying again in %.0f s): %s", spec, wait, exc,
                    exc_info=None if isinstance(exc, LookalikeError) else exc)
        self._stop.wait(wait)

    # -- upkeep -------------------------------------------------------------------------------

    def _upkeep(self) -> None:
        col = self.collection
        saved_at = time.monotonic()
        while not self._stop.wait(UPKEEP_SECONDS):
            try:
                save = time.monotonic() - saved_at > SAVE_DELTA_SECONDS
                due = col.serve_upkeep(save_delta=save)
                saved_at = time.monotonic() if save else saved_at
                if self.config.auto_compact:
                    self._compaction.poll(due)
            except Exception as exc:  # upkeep must outlive a bad moment; the next round retries
                log.warning("Background upkeep failed (will retry): %s", exc, exc_info=exc)

    # -- reporting ----------------------------------------------------------------------------

    def _consumer_stats(self) -> dict[str, Any] | None:
        """What `serve --consume` has done; ``running`` is false (and ``error`` says why) while
        the queue cannot be consumed."""
        if not self.config.consume:
            return None
        stats = self._consumer.stats.as_dict() if self._consumer else {}
        return {**stats, "running": self.consume_error is None and self._consumer is not None,
                "error": self.consume_error}

    def stats(self) -> dict[str, Any]:
        col = self.collection
        info = col.info()
        batcher = self._batcher
        return {
            "images": info.images, "failed": info.failed, "removed": info.removed,
            "model": info.model, "dim": info.dim, "runtime": col.embedder.runtime,
            "index": {"spec": info.index_spec, "kind": info.index_kind,
                      "main_vectors": info.main_vectors, "delta_vectors": info.delta_vectors,
                      "tombstones": info.tombstones,
                      "projection": info.pca},  # `lookalike reduce` or `learn`: None without
            "compaction": {"running": self._compaction.running,
                           "completed": self._compaction.completed},
            "batching": {"enabled": batcher is not None,
                         "model_calls": batcher.calls if batcher else None,
                         "images": batcher.images if batcher else None,
                         "mean_batch": round(batcher.images / batcher.calls, 2)
                         if batcher and batcher.calls else None},
            "uptime_s": round(time.time() - self.started, 1), "pid": os.getpid(),
            "load_s": round(self.load_seconds or 0.0, 2),
            "requests": self.latencies.summary(),
            "consumer": self._consumer_stats(),
        }


def _unmap_large_buffers() -> None:
    """Have glibc map every allocation of 1 MiB or more on its own, and unmap it when freed.

    A decode frees buffers of hundreds of MB; after the first such free glibc raises its mmap
    threshold (up to 32 MB) and keeps later ones in per-thread heaps, so the process grows by
    every request thread's share. Measured: eight concurrent uploads of a 177 MP PNG peaked at
    1.25 GB without this, 0.83 GB with it; single and batch embedding times did not move.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: musl has no mallopt
        pass
