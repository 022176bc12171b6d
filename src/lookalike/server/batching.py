"""Concurrent queries share model calls: one thread runs the model, taking every query waiting.

No query waits for others to arrive (a lone query runs at once, as batch 1); under load, queries
that queued while the model was busy run together in one call, which costs much less per image
than one call each (and never runs several model calls on the same cores at once).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Job:
    pixels: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    vectors: np.ndarray | None = None
    error: BaseException | None = None


class QueryBatcher:
    """Wraps an Embedder: same interface, ``embed_pixels`` callable from any thread."""

    def __init__(self, embedder: Any, max_batch: int = 16) -> None:
        self._embedder = embedder
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.calls = 0
        self.images = 0
        self._thread = threading.Thread(target=self._run, name="lookalike-embed", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:  # preprocess, dim, name, runtime...
        return getattr(self._embedder, name)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        job = _Job(pixels)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.vectors is not None
        return job.vectors

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, size = [job], len(job.pixels)
            while size < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(more)
                size += len(more.pixels)
            self._embed(jobs)

    def _embed(self, jobs: list[_Job]) -> None:
        try:
            vectors = self._embedder.embed_pixels(np.concatenate([j.pixels for j in jobs]))
            start = 0
            for job in jobs:
                job.vectors = vectors[start:start + len(job.pixels)]
                start += len(job.pixels)
        except Exception as exc:  # handed to every waiting caller, who re-raises it
            for job in jobs:
                job.error = exc
        finally:
            self.calls += 1
            self.images += sum(len(j.pixels) for j in jobs)
            for job in jobs:
                job.done.set()
