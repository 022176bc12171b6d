"""``lookalike consume``: a queue feeds a collection's delta index, one batch at a time.

Each step pulls up to ``batch_size`` messages, reads the events in them (:mod:`.events`), keeps the
newest per uri, fetches and decodes the images to upsert (threads: object-store latency overlaps),
embeds them as one batch, and then, holding the collection's writer lock, commits the whole batch
in one store transaction, with each uri's event position, and brings the live index in step. Only
then are the messages acknowledged. So delivery is at least once and the effect exactly once: a
consumer killed before the commit leaves nothing half-written and gets the batch again; one killed
after it gets messages whose events are now stale (their positions were committed with them) or
unchanged (an upsert of bytes already indexed under that uri), and a delete of a uri not indexed
does nothing.

What fails is sorted:
- a bad image is a failed row, with its reason, as in indexing;
- an object gone before its event was consumed is skipped (its delete event follows);
- a message that can never be applied (not JSON, unknown shape, another model's vectors) goes to
  the dead letters at once, with the reason;
- a failure that may pass (the object store unreachable, access denied) sends the message back
  for a retry after a back-off, and to the dead letters after ``max_attempts`` deliveries.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .. import objects
from ..collection import Collection
from ..errors import (
    CollectionLockedError,
    DecodeError,
    IndexUnavailableError,
    ObjectStoreError,
    QueueError,
    StoreUnavailableError,
)
from ..imaging import content_hash, decode_bytes, decode_file
from ..queues import Message, Source
from ..storage import EventWrite, ImageRecord, NewImage
from ..types import Preprocess
from .events import Event, PoisonMessage, newest, parse

#: Errors after which the consumer waits and carries on: a server that is down comes back.
_PASSING = (QueueError, StoreUnavailableError, IndexUnavailableError, CollectionLockedError)


@dataclass
class ConsumeStats:
    """What a consumer has done since it started (``/stats`` and ``lookalike consume`` show
    it)."""

    source: str
    started: float = field(default_factory=time.time)
    messages: int = 0
    batches: int = 0
    added: int = 0  # images written, active
    failed: int = 0  # images written as failed (a bad image), with the reason
    deleted: int = 0
    unchanged: int = 0  # upserts of bytes already indexed under that uri
    stale: int = 0  # events older than one already applied to their uri, or redelivered
    skipped: int = 0  # objects gone before their event was consumed
    retried: int = 0
    dead_lettered: int = 0
    lag: int | None = None
    last_error: str | None = None
    last_batch_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        elapsed = max(time.time() - self.started, 1e-9)
        return (self.added + self.failed + self.unchanged) / elapsed

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_second": round(self.images_per_second, 2)}


@dataclass
class _Plan:
    """What a batch will write, gathered before it becomes one :class:`EventWrite`."""

    images: list[NewImage] = field(default_factory=list)
    retire: list[int] = field(default_factory=list)
    metadata: dict[int, str] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)

    def write(self) -> EventWrite | None:
        if not (self.images or self.retire or self.metadata or self.positions):
            return None
        return EventWrite(self.images, self.retire, self.metadata, self.positions)


@dataclass
class _Prepared:
    """An upsert made ready outside the writer lock: the row to write, or why there is none."""

    image: NewImage | None = None
    gone: bool = False
    retry: str | None = None  # a failure that may pass
    pixels: np.ndarray | None = None


class Consumer:
    """Applies a :class:`~lookalike.queues.Source`'s messages to a collection."""

    def __init__(self, collection: Collection, source: Source, *, batch_size: int = 32,
                 max_attempts: int = 5, wait: float = 2.0, writer_wait: float = 30.0,
                 upkeep_seconds: float | None = 60.0,
                 log: Callable[[str], None] | None = None) -> None:
        self.collection = collection
        self.source = source
        self.batch_size = max(1, batch_size)
        self.max_attempts = max(1, max_attempts)
        self.wait = wait
        self.writer_wait = writer_wait
        self.upkeep_seconds = upkeep_seconds  # None: someone else (a server) saves the delta
        self.stats = ConsumeStats(source.name)
        self._log = log or (lambda _: None)
        self._fingerprint = collection.manifest.model.fingerprint
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lookalike-fetch")
        self._last_upkeep = time.monotonic()
        self._last_lag = 0.0

    def run(self, stop: threading.Event) -> ConsumeStats:
        """Consume until ``stop`` is set; the batch in hand is finished, committed and
        acknowledged first."""
        backoff = 1.0
        try:
            while not stop.is_set():
                try:
                    self.step()
                    backoff = 1.0
                except _PASSING as exc:
                    self.stats.last_error = str(exc)
                    self._log(f"{exc} (trying again in {backoff:.0f} s)")
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.upkeep_seconds is not None:
            self.collection.live.save_delta()

    def step(self) -> int:
        """Receive, apply and acknowledge one batch; how many messages it held."""
        messages = self.source.receive(self.batch_size, self.wait)
        self._upkeep()
        if not messages:
            return 0
        started = time.perf_counter()
        self.stats.messages += len(messages)
        parsed: list[tuple[Message, list[Event]]] = []
        done: list[Message] = []
        for message in messages:
            try:
                parsed.append((message, [self._checked(e) for e in parse(message.body)]))
            except PoisonMessage as exc:
                self._dead_letter(message, str(exc))
                done.append(message)
        retry_uris = self._apply([e for _, events in parsed for e in events])
        retry: list[Message] = []
        for message, events in parsed:
            reasons = [retry_uris[e.uri] for e in events if e.uri in retry_uris]
            if not reasons:
                done.append(message)
            elif message.attempts >= self.max_attempts:
                self._dead_letter(message, f"failed {message.attempts} times: {reasons[0]}")
                done.append(message)
            else:
                retry.append(message)
        self.source.settle(done, retry)
        self.stats.retried += len(retry)
        self.stats.batches += 1
        self.stats.last_batch_seconds = round(time.perf_counter() - started, 4)
        return len(messages)

    def _checked(self, event: Event) -> Event:
        if event.precomputed and event.fingerprint != self._fingerprint:
            raise PoisonMessage(
                f"the vector for {event.uri} was made by {event.fingerprint!r}, but this "
                f"collection's model is {self._fingerprint!r}: run the extractor with the "
                "collection's model")
        if event.vector is not None and event.vector.shape != (self.collection.dim,):
            raise PoisonMessage(f"the vector for {event.uri} has {event.vector.size} "
                                f"dimensions; this collection's model makes {self.collection.dim}")
        if event.vector is not None and not np.any(event.vector):
            raise PoisonMessage(f"the vector for {event.uri} is all zeros")
        return event

    def _apply(self, events: list[Event]) -> dict[str, str]:
        """Apply ``events``; the uris whose events must be retried, with the reason."""
        store = self.collection.store
        winners = newest(events)
        self.stats.stale += len(events) - len(winners)
        positions = store.event_positions([u for u, e in winners.items() if e.position])
        todo = {u: e for u, e in winners.items() if not _stale(e, positions)}
        prepared = self._prepare([e for e in todo.values() if e.op == "upsert"])
        with self.collection.writer(self.writer_wait):
            # Again, now that no other writer can slip in between.
            positions = store.event_positions([u for u, e in todo.items() if e.position])
            live = store.live_rows(list(todo))
            plan = _Plan()
            retry: dict[str, str] = {}
            for uri, event in todo.items():
                if _stale(event, positions):
                    self.stats.stale += 1
                    continue
                ready = prepared.get(uri)
                if ready is not None and ready.retry:
                    retry[uri] = ready.retry
                    continue
                self._plan(event, ready, live.get(uri), plan)
                if event.position:
                    plan.positions[uri] = event.position
            self.stats.stale += len(winners) - len(todo)
            batch = plan.write()
            if batch is not None:
                self.collection.apply_events(batch)
        return retry

    def _plan(self, event: Event, ready: _Prepared | None, row: ImageRecord | None,
              plan: _Plan) -> None:
        """Add what ``event`` does to ``plan``, given the uri's live row."""
        if event.op == "delete":
            if row is not None:
                plan.retire.append(row.id)
                self.stats.deleted += 1
            return
        assert ready is not None  # every upsert was prepared
        if ready.gone or ready.image is None:
            self.stats.skipped += 1
            return
        image = ready.image
        metadata = json.dumps(event.metadata) if event.metadata is not None else None
        if (row is not None and row.status == "active" and image.vector is not None
                and row.content_hash == image.content_hash):
            self.stats.unchanged += 1
            if metadata is not None:
                plan.metadata[row.id] = metadata
            return
        if metadata is None and row is not None:  # a new version keeps the image's metadata
            metadata = self.collection.store.metadata(row.id)
        plan.images.append(replace(image, metadata=metadata))
        if image.vector is None:
            self.stats.failed += 1
        else:
            self.stats.added += 1

    def _prepare(self, upserts: list[Event]) -> dict[str, _Prepared]:
        """Fetch, decode and embed the upserts that need it, as one batch."""
        found: dict[str, _Prepared] = {}
        fetch = [e for e in upserts if not e.precomputed]
        preprocess = self.collection.embedder.preprocess  # loads the model here, not in threads
        for event, ready in zip(fetch, self._pool.map(lambda e: self._fetch(e, preprocess), fetch),
                                strict=True):
            found[event.uri] = ready
        for event in upserts:
            if event.precomputed:
                found[event.uri] = _precomputed(event)
        embed = [r for r in found.values() if r.pixels is not None and r.image is not None]
        reused = {}
        for ready in embed:
            assert ready.image is not None
            vector = self.collection.store.vector_by_hash(ready.image.content_hash or "")
            if vector is not None:
                reused[id(ready)] = vector
        fresh = [r for r in embed if id(r) not in reused]
        vectors: Any = []
        if fresh:
            pixels = [r.pixels for r in fresh if r.pixels is not None]
            vectors = self.collection.embedder.embed_pixels(np.stack(pixels))
        for ready, vector in [*zip(fresh, vectors, strict=True),
                              *((r, reused[id(r)]) for r in embed if id(r) in reused)]:
            assert ready.image is not None
            ready.image = replace(ready.image, vector=vector)
            ready.pixels = None
        return found

    def _fetch(self, event: Event, preprocess: Preprocess) -> _Prepared:
        limits = self.collection.limits
        if not objects.is_object_uri(event.uri):  # a local path, named by an operation
            try:
                info = os.stat(event.uri)
            except OSError:
                return _Prepared(gone=True)
            decoded = decode_file(event.uri, preprocess, limits.max_pixels, limits.max_file_bytes)
            facts: dict[str, Any] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        else:
            try:
                data, obj = objects.read(event.uri, limits.max_file_bytes)
            except ObjectStoreError as exc:
                if exc.reason == "missing":
                    return _Prepared(gone=True)
                if exc.reason == "too_large":
                    return _Prepared(NewImage(event.uri, None, None, None, error=str(exc)))
                return _Prepared(retry=str(exc))
            facts = {"size": obj.size, "mtime_ns": obj.mtime_ns, "etag": obj.etag}
            try:
                decoded = decode_bytes(data, preprocess, limits.max_pixels, limits.reserve)
            except DecodeError as exc:
                return _Prepared(NewImage(event.uri, error=str(exc),
                                          content_hash=content_hash(data), **facts))
        if decoded.error:
            return _Prepared(NewImage(event.uri, error=decoded.error,
                                      content_hash=decoded.content_hash or None, **facts))
        return _Prepared(NewImage(event.uri, content_hash=decoded.content_hash,
                                  width=decoded.width, height=decoded.height, **facts),
                         pixels=decoded.pixels)

    def _dead_letter(self, message: Message, reason: str) -> None:
        self.source.dead_letter(message, reason)
        self.stats.dead_lettered += 1
        self._log(f"dead-lettered message {message.id}: {reason}")

    def _upkeep(self) -> None:
        now = time.monotonic()
        if now - self._last_lag > 5.0:
            self._last_lag = now
            self.stats.lag = self.source.lag()
        if self.upkeep_seconds is not None and now - self._last_upkeep > self.upkeep_seconds:
            self._last_upkeep = now
            if self.collection.serve_upkeep(save_delta=True):
                self.collection.compact(wait=False)


def _stale(event: Event, positions: dict[str, str]) -> bool:
    held = positions.get(event.uri)
    return event.position is not None and held is not None and event.position <= held


def _precomputed(event: Event) -> _Prepared:
    facts = event.facts
    vector = None  # checked non-zero; normalised again, as every embedder's output is
    if event.vector is not None:
        vector = event.vector / float(np.linalg.norm(event.vector))
    return _Prepared(NewImage(
        event.uri, _int(facts.get("size")), _int(facts.get("mtime_ns")),
        facts.get("content_hash"), _int(facts.get("width")), _int(facts.get("height")),
        vector=vector, error=event.error if vector is None else None,
        etag=facts.get("etag") if isinstance(facts.get("etag"), str) else None))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def consume_in_thread(consumer: Consumer) -> tuple[threading.Thread, threading.Event]:
    """Run ``consumer`` in a background thread (``lookalike serve --consume``)."""
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), name="lookalike-consume",
                              daemon=True)
    thread.start()
    return thread, stop


