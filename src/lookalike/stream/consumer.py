"""``lookalike consume``: a queue feeds a collection's delta index, one batch at a time.

Each batch: up to ``batch_size`` messages are received and read into events (:mod:`.events`),
the newest per uri kept, and the images to upsert fetched and decoded (:mod:`.fetching`: in
worker processes, as indexing does); then they are embedded as one batch and, holding the
collection's writer lock, the whole batch is committed in one store transaction, with each uri's
event position, and the live index brought in step. Only then are the messages acknowledged.
While one batch is embedded and committed, the next is received and decoded. So delivery is at
least once and the effect exactly once: a consumer killed before the commit leaves nothing
half-written and gets the batch again; one killed after it gets messages whose events are now
stale (their positions were committed with them) or unchanged (an upsert of bytes already
indexed under that uri), and a delete of a uri not indexed does nothing.

What fails is sorted:
- a bad image is a failed row, with its reason, as in indexing;
- an object gone before its event was consumed is skipped (its delete event follows);
- a message that can never be applied (not JSON, unknown shape, another model's vectors) goes to
  the dead letters at once, with the reason;
- an object store that cannot be reached hands the batch back and stops receiving until the store
  answers again: an outage sends nothing to the dead letters;
- a failure with one object that may pass (access denied, the store refusing) sends the message
  back for a retry after a back-off, and to the dead letters after ``max_attempts`` deliveries.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .. import objects, settings
from ..collection import Collection
from ..collection.background import BackgroundCompaction
from ..errors import (
    CollectionLockedError,
    IndexUnavailableError,
    LookalikeError,
    ObjectStoreError,
    QueueError,
    StoreUnavailableError,
)
from ..queues import Message, Source
from ..storage import EventWrite, ImageRecord, NewImage
from .events import Event, PoisonMessage, newest, parse
from .fetching import Fetched, Fetcher

#: Errors after which the consumer waits and carries on: a server that is down comes back.
_PASSING = (QueueError, StoreUnavailableError, IndexUnavailableError, CollectionLockedError)


class StoreDown(ObjectStoreError):
    """The object store cannot be reached at all: the batch goes back to the queue and nothing
    more is received until the store answers again (no message is dead-lettered for it)."""

    def __init__(self, uri: str, message: str) -> None:
        super().__init__(message, "unreachable")
        self.uri = uri


@dataclass
class ConsumeStats:
    """What a consumer has done since it started (``/stats`` and ``lookalike consume`` show
    it)."""

    source: str
    started: float = field(default_factory=time.time)
    messages: int = 0
    batches: int = 0
    added: int = 0  # new images, active
    updated: int = 0  # new bytes (or new metadata) for an image already indexed under that uri
    failed: int = 0  # images written as failed (a bad image), with the reason
    deleted: int = 0
    unchanged: int = 0  # upserts of bytes already indexed under that uri
    ignored: int = 0  # events that change nothing: S3's test event, other kinds of event or
    # of object (not an image name), deletes of uris not indexed
    stale: int = 0  # events older than one already applied to their uri, or redelivered
    skipped: int = 0  # objects gone before their event was consumed
    retried: int = 0
    dead_lettered: int = 0
    lag: int | None = None
    last_error: str | None = None
    last_batch_seconds: float = 0.0
    first_received: float | None = None  # when the first batch came (time.time())
    last_committed: float | None = None  # when the last batch was done

    @property
    def images_per_second(self) -> float:
        """Images done a second, from the first batch received to the last one done: the
        time before the first message came is not counted."""
        images = self.added + self.updated + self.failed + self.unchanged
        if not images or self.first_received is None or self.last_committed is None:
            return 0.0
        return images / max(self.last_committed - self.first_received, 1e-3)

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
class _Batch:
    """Messages received, read into events, their images being fetched: a batch in hand."""

    messages: list[Message]
    events: list[tuple[Message, list[Event]]]  # the messages that are not poison
    poison: list[tuple[Message, str]]  # and those that are, with why: dead-lettered on finishing
    todo: dict[str, Event]  # the newest event per uri, not known to be stale
    fetching: dict[str, Future[Fetched]]
    counts: dict[str, int]  # what reading the events found (ignored, stale), counted on finishing
    started: float = field(default_factory=time.perf_counter)


class Consumer:
    """Applies a :class:`~lookalike.queues.Source`'s messages to a collection.

    :meth:`run` works on two batches at once: while one is embedded and committed, the next is
    received and its images fetched and decoded (in ``workers`` processes, as indexing does).
    Batches still commit, and are acknowledged, one after the other, in the order received.
    """

    def __init__(self, collection: Collection, source: Source, *, batch_size: int = 32,
                 max_attempts: int = 5, wait: float = 2.0, writer_wait: float = 30.0,
                 workers: int | None = None, allow_paths: Sequence[str] = (),
                 upkeep_seconds: float | None = 60.0, stats: ConsumeStats | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.collection = collection
        self.source = source
        self.batch_size = max(1, batch_size)
        self.max_attempts = max(1, max_attempts)
        self.wait = wait
        self.writer_wait = writer_wait
        self.upkeep_seconds = upkeep_seconds  # None: someone else (a server) saves the delta
        self.stats = stats or ConsumeStats(source.name)
        # Whoever can send to the queue names what is read: local files only under these.
        self._allowed = tuple(os.path.join(os.path.realpath(p), "") for p in allow_paths)
        self._log = log or (lambda _: None)
        self._fingerprint = collection.manifest.model.fingerprint
        limits = collection.limits
        self._fetcher = Fetcher(collection.embedder.preprocess, limits.max_pixels,
                                limits.max_file_bytes, reserve=limits.reserve,
                                workers=settings.resolve("workers", workers))
        self._compaction = BackgroundCompaction(collection.path)  # consuming goes on meanwhile
        self._last_upkeep = time.monotonic()
        self._last_lag = 0.0

    def run(self, stop: threading.Event) -> ConsumeStats:
        """Consume until ``stop`` is set; the batches in hand are finished, committed and
        acknowledged first."""
        backoff = 1.0
        ahead: _Batch | None = None
        try:
            while not stop.is_set() or ahead is not None:
                following = None
                try:
                    # With a batch in hand, take only what has arrived: it is not held back.
                    following = (None if stop.is_set() else
                                 self._begin(0.0 if ahead is not None else self.wait))
                    if ahead is not None:
                        batch, ahead = ahead, None
                        if self._finish(batch) and following and self.source.ordered:
                            # The retry rewound the partition: what follows comes again.
                            self._abandon(following)
                            following = None
                    ahead, following = following, None
                    backoff = 1.0
                except (*_PASSING, StoreDown) as exc:
                    if following is not None:  # a batch failed: it was handed back (rewound)
                        if self.source.ordered:
                            self._abandon(following)
                        else:
                            ahead = following
                    self.stats.last_error = str(exc)
                    if isinstance(exc, StoreDown):  # receive nothing until it is back
                        self._wait_for_store(exc.uri, stop)
                        continue
                    self._log(f"{exc} (trying again in {backoff:.0f} s)")
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
        finally:
            self.close()
        return self.stats

    def step(self) -> int:
        """Receive, apply and acknowledge one batch; how many messages it held."""
        batch = self._begin(self.wait)
        if batch is None:
            return 0
        self._finish(batch)
        return len(batch.messages)

    def close(self) -> None:
        self._fetcher.close()
        if self.upkeep_seconds is not None:  # cache the delta for the next process, if no other
            self.collection.indexes.save_delta(wait=self.writer_wait)  # writer holds the lock

    def _begin(self, wait: float) -> _Batch | None:
        """Receive a batch (waiting up to ``wait`` seconds for its first message), read its
        events and start fetching their images."""
        messages = self.source.receive(self.batch_size, wait)
        self._upkeep()
        if not messages:
            return None
        if self.stats.first_received is None:
            self.stats.first_received = time.time()
        events: list[tuple[Message, list[Event]]] = []
        poison: list[tuple[Message, str]] = []
        for message in messages:
            try:
                events.append((message, [self._checked(e) for e in parse(message.body)]))
            except PoisonMessage as exc:
                poison.append((message, str(exc)))
        every = [e for _, found in events for e in found]
        winners = newest(every)
        positions = self.collection.store.event_positions(
            [u for u, e in winners.items() if e.position])
        todo = {u: e for u, e in winners.items() if not _stale(e, positions)}
        fetching = {u: self._fetcher.submit(u) for u, e in todo.items()
                    if e.op == "upsert" and not e.precomputed}
        counts = {"ignored": sum(not found for _, found in events),
                  "stale": len(every) - len(todo)}
        return _Batch(messages, events, poison, todo, fetching, counts)

    def _finish(self, batch: _Batch) -> bool:
        """Embed, commit and acknowledge a batch begun; whether any message is to be retried.
        A batch that cannot be committed is handed back to the queue, to come again."""
        for message, reason in batch.poison:
            self._dead_letter(message, reason)
        done = [m for m, _ in batch.poison]
        try:
            retry_uris = self._apply(batch)
        except BaseException:
            with contextlib.suppress(LookalikeError):
                self.source.settle(done, [m for m, _ in batch.events])
            raise
        retry = []
        for message, events in batch.events:
            reasons = [retry_uris[e.uri] for e in events if e.uri in retry_uris]
            if not reasons:
                done.append(message)
            elif message.attempts >= self.max_attempts:
                self._dead_letter(message, f"failed {message.attempts} times: {reasons[0]}")
                done.append(message)
            else:
                retry.append(message)
        self.source.settle(done, retry)
        self.stats.messages += len(batch.messages)
        self.stats.ignored += batch.counts["ignored"]
        self.stats.stale += batch.counts["stale"]
        self.stats.retried += len(retry)
        self.stats.batches += 1
        self.stats.last_committed = time.time()
        self.stats.last_batch_seconds = round(time.perf_counter() - batch.started, 4)
        return bool(retry)

    def _wait_for_store(self, uri: str, stop: threading.Event) -> None:
        """Wait, receiving nothing (so no message is delivered again and again meanwhile), until
        the object store that holds ``uri`` answers again."""
        wait = 1.0
        self._log(f"{self.stats.last_error} (waiting for it; no message is received meanwhile)")
        while not stop.wait(wait):
            try:
                objects.head(uri)
            except ObjectStoreError as exc:
                if exc.reason == "unreachable":
                    wait = min(wait * 2, 30.0)
                    continue
            self._log(f"The object store answers again ({uri}): consuming.")
            return

    def _abandon(self, batch: _Batch) -> None:
        """Drop a batch begun, which its queue delivers again: nothing of it was done."""
        for future in batch.fetching.values():
            future.cancel()

    def _checked(self, event: Event) -> Event:
        if not objects.is_object_uri(event.uri):
            where = os.path.realpath(event.uri) if os.path.isabs(event.uri) else None
            if where is None or not where.startswith(self._allowed) or not self._allowed:
                raise PoisonMessage(
                    f"{event.uri} is not an s3:// URI, and local paths are only read under the "
                    "folders a consumer is given (--allow-path DIR): anyone who can send to "
                    "the queue could otherwise have any file read")
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

    def _apply(self, batch: _Batch) -> dict[str, str]:
        """Commit what the batch's events do; the uris whose events must be retried, with the
        reason."""
        store = self.collection.store
        prepared = self._prepare(batch)
        down = next((u for u, r in prepared.items() if r.outage), None)
        if down is not None:
            raise StoreDown(down, prepared[down].retry or "")
        with self.collection.writer(self.writer_wait):
            # Positions again, now that no other writer can slip in between.
            positions = store.event_positions([u for u, e in batch.todo.items() if e.position])
            live = store.live_rows(list(batch.todo))
            plan = _Plan()
            retry: dict[str, str] = {}
            for uri, event in batch.todo.items():
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
            write = plan.write()
            if write is not None:
                self.collection.apply_events(write)
        return retry

    def _plan(self, event: Event, ready: Fetched | None, row: ImageRecord | None,
              plan: _Plan) -> None:
        """Add what ``event`` does to ``plan``, given the uri's live row."""
        if event.op == "delete":
            if row is not None:
                plan.retire.append(row.id)
                self.stats.deleted += 1
            else:
                self.stats.ignored += 1
            return
        assert ready is not None  # every upsert was prepared
        if ready.gone or ready.image is None:
            self.stats.skipped += 1
            return
        image = ready.image
        metadata = json.dumps(event.metadata) if event.metadata is not None else None
        if (row is not None and row.status == "active" and image.vector is not None
                and row.content_hash == image.content_hash):
            if metadata is not None:
                plan.metadata[row.id] = metadata
                self.stats.updated += 1
            else:
                self.stats.unchanged += 1
            return
        if metadata is None and row is not None:  # a new version keeps the image's metadata
            metadata = self.collection.store.metadata(row.id)
        plan.images.append(replace(image, metadata=metadata))
        if image.vector is None:
            self.stats.failed += 1
        elif row is not None:
            self.stats.updated += 1
        else:
            self.stats.added += 1

    def _prepare(self, batch: _Batch) -> dict[str, Fetched]:
        """The batch's upserts, embedded as one batch (or their vectors reused by content)."""
        found = {u: f.result() for u, f in batch.fetching.items()}
        found.update((u, _precomputed(e)) for u, e in batch.todo.items()
                     if e.op == "upsert" and e.precomputed)
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
            self._compaction.poll(self.collection.serve_upkeep(save_delta=True))


def _stale(event: Event, positions: dict[str, str]) -> bool:
    held = positions.get(event.uri)
    return event.position is not None and held is not None and event.position <= held


def _precomputed(event: Event) -> Fetched:
    facts = event.facts
    vector = None  # checked non-zero; normalised again, as every embedder's output is
    if event.vector is not None:
        vector = event.vector / float(np.linalg.norm(event.vector))
    return Fetched(NewImage(
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


