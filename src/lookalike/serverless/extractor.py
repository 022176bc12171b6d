"""The extractor: image bytes, or an object's URI, in; its embedding, or a message, out.

It holds no state but the model, loaded once on first use and kept for the life of the process
(a warm Lambda or Cloud Run instance reuses it). A bad image is an answer, not a failure: its
message says why it could not be embedded, as a failed row of `lookalike index` does. An object
that is gone is nothing to say: its delete event follows. Anything that may pass if retried
raises, so the platform retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import objects, settings
from ..embedders import Embedder, embedding_fingerprint, get_model_spec
from ..errors import DecodeError, LookalikeError, ObjectStoreError, UsageError
from ..imaging import Reserve, content_hash, decode_bytes

#: A message as the consumer reads it (JSON); see the package docstring for its fields.
Message = dict[str, Any]
# Objects of a batch read at once: reads wait on the network. Decoding goes one image at a time
# (one near max_pixels takes hundreds of MB while it decodes).
_READERS = 8


@dataclass(frozen=True)
class EmbedResult:
    """One image's embedding and what it was made from; ``timings_ms`` has decode and embed."""

    vector: np.ndarray  # (dim,) float32, unit length
    model: str
    fingerprint: str
    width: int
    height: int
    content_hash: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"vector": as_json_floats(self.vector), "model": self.model,
                "fingerprint": self.fingerprint, "width": self.width, "height": self.height,
                "content_hash": self.content_hash, "took_ms": dict(self.timings_ms)}


@dataclass(frozen=True)
class ObjectEvent:
    """Something happened to an object: ``op`` is ``upsert`` or ``delete``; ``sequencer`` orders
    the events of one key (S3's, when the event had one)."""

    op: str
    uri: str
    sequencer: str | None = None
    metadata: dict[str, Any] | None = None

    def delete_message(self) -> Message:
        return _optional({"op": "delete", "uri": self.uri}, sequencer=self.sequencer)


@dataclass(frozen=True)
class Extracted:
    """What became of one object: its ``message``, None when it was skipped (gone), or the
    ``failure`` (an ObjectStoreError that may pass if retried, or another refusal)."""

    uri: str
    message: Message | None = None
    failure: LookalikeError | None = None


def embed_bytes(data: bytes, embedder: Embedder, *, max_pixels: int,
                reserve: Reserve | None = None) -> EmbedResult:
    """Embed the bytes of one image file with ``embedder``; raises DecodeError for a bad one.
    ``reserve`` takes the decode's memory from a budget first (a server's)."""
    started = time.perf_counter()
    decoded = decode_bytes(data, embedder.preprocess, max_pixels, reserve)
    assert decoded.pixels is not None  # decode_bytes raises DecodeError instead
    decoded_at = time.perf_counter()
    vector = embedder.embed_pixels(decoded.pixels[None])[0]
    timings = {"decode": decoded_at - started, "embed": time.perf_counter() - decoded_at}
    return EmbedResult(vector, embedder.name, fingerprint_of(embedder), decoded.width,
                       decoded.height, decoded.content_hash,
                       {stage: round(s * 1000.0, 2) for stage, s in timings.items()})


def as_json_floats(vector: np.ndarray) -> list[float]:
    """A float32 vector as the shortest numbers that read back as exactly it: half the text of
    its values written as float64 (a 1280-d unit vector: 17 KB of JSON, not 28)."""
    return [float(str(x)) for x in vector.astype(np.float32)]


def fingerprint_of(embedder: Embedder) -> str:
    """The fingerprint a collection built by ``embedder`` records in its manifest."""
    return embedding_fingerprint(embedder.spec, embedder.weights)


class Extractor:
    """Embeds images by URI or bytes with one model, loaded on first use.

    Every option left out comes from the settings (``LOOKALIKE_MODEL``, ``LOOKALIKE_RUNTIME``,
    ``LOOKALIKE_MAX_PIXELS``...), as for `lookalike index`, so a message's vector is the one
    indexing the same bytes gives.
    """

    def __init__(self, model: str | None = None, *, weights: str | None = None,
                 runtime: str | None = None, device: str | None = None,
                 threads: int | None = None, precision: str | None = None,
                 max_pixels: int | None = None, max_file_bytes: int | None = None,
                 batch_size: int | None = None) -> None:
        self.model = settings.resolve("model", model)
        self.weights = weights
        spec = get_model_spec(self.model)
        self.fingerprint = embedding_fingerprint(spec, weights)
        self.preprocess = spec.preprocess  # decoding needs no model: a bad image loads none
        self.max_pixels = settings.resolve("max_pixels", max_pixels)
        self.max_file_bytes = settings.resolve("max_file_bytes", max_file_bytes)
        self.batch_size = max(1, settings.resolve("batch_size", batch_size))
        self._load = {"runtime": settings.resolve("runtime", runtime),
                      "device": settings.resolve("device", device),
                      "threads": settings.resolve("threads", threads),
                      "precision": settings.resolve("precision", precision)}
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> tuple[Any, ...]:
        """What decides this extractor's answers: two with the same key answer alike."""
        return (self.model, self.weights, self.max_pixels, self.max_file_bytes, self.batch_size,
                *sorted(self._load.items()))

    @property
    def embedder(self) -> Embedder:
        """The model, loaded by the first call that needs it (one load, however many threads)."""
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder.load(self.model, weights=self.weights, **self._load)
            return self._embedder

    def embed_bytes(self, data: bytes) -> EmbedResult:
        """Embed the bytes of one image file; raises DecodeError for a bad one."""
        return embed_bytes(data, self.embedder, max_pixels=self.max_pixels)

    def embed_uri(self, uri: str, *, sequencer: str | None = None,
                  metadata: dict[str, Any] | None = None) -> Message | None:
        """The upsert message for the object at ``uri``: with its vector, or with ``error`` when
        it is not a usable image; None when there is no such object. Raises ObjectStoreError
        when it cannot be read (``.transient``: it may pass if retried)."""
        [found] = self.embed_uris([ObjectEvent("upsert", uri, sequencer, metadata)])
        if found.failure is not None:
            raise found.failure
        return found.message

    def extract(self, events: Sequence[ObjectEvent]) -> list[Extracted]:
        """What each event says to the consumer, in order: a delete is passed on as it is, the
        upserts are embedded together (:meth:`embed_uris`)."""
        upserts = self.embed_uris([e for e in events if e.op != "delete"])
        found = iter(upserts)
        return [Extracted(e.uri, e.delete_message()) if e.op == "delete" else next(found)
                for e in events]

    def embed_uris(self, items: Sequence[str | ObjectEvent]) -> list[Extracted]:
        """:meth:`embed_uri` for each item (a URI or an upsert event), in order, each failing on
        its own; ``batch_size`` objects are read and embedded at a time, in one model call."""
        events = [ObjectEvent("upsert", item) if isinstance(item, str) else item
                  for item in items]
        for event in events:
            if event.op != "upsert":
                raise UsageError(f"embed_uris embeds objects; {event.uri} came with op "
                                 f"{event.op!r}: send its delete_message() instead.")
        found: list[Extracted] = []
        for start in range(0, len(events), self.batch_size):
            found += self._embed_batch(events[start:start + self.batch_size])
        return found

    def _embed_batch(self, events: Sequence[ObjectEvent]) -> list[Extracted]:
        with ThreadPoolExecutor(min(_READERS, len(events))) as pool:
            reads = list(pool.map(self._read, events))
        results: list[Extracted | None] = [None] * len(events)
        waiting: list[tuple[int, Message, np.ndarray]] = []
        for i, (event, read) in enumerate(zip(events, reads, strict=True)):
            if isinstance(read, Extracted):
                results[i] = read
                continue
            data, info = read
            message = _optional({"op": "upsert", "uri": event.uri, "model": self.model,
                                 "fingerprint": self.fingerprint},
                                content_hash=content_hash(data), size=info.size, etag=info.etag,
                                mtime_ns=info.mtime_ns, sequencer=event.sequencer,
                                metadata=event.metadata)
            try:
                decoded = decode_bytes(data, self.preprocess, self.max_pixels)
            except DecodeError as exc:
                results[i] = Extracted(event.uri, {**message, "error": str(exc)})
                continue
            assert decoded.pixels is not None  # decode_bytes raises DecodeError instead
            waiting.append((i, {**message, "width": decoded.width, "height": decoded.height},
                            decoded.pixels))
        if waiting:
            vectors = self.embedder.embed_pixels(np.stack([pixels for _, _, pixels in waiting]))
            for (i, message, _), vector in zip(waiting, vectors, strict=True):
                results[i] = Extracted(message["uri"],
                                       {**message, "vector": as_json_floats(vector)})
        return [r for r in results if r is not None]

    def _read(self, event: ObjectEvent) -> tuple[bytes, objects.ObjectInfo] | Extracted:
        try:
            return objects.read(event.uri, self.max_file_bytes)
        except ObjectStoreError as exc:
            if exc.reason == "missing":  # its delete event follows
                return Extracted(event.uri)
            if exc.reason == "too_large":  # a property of the object: a failed row, as a file's
                return Extracted(event.uri, _optional(
                    {"op": "upsert", "uri": event.uri, "model": self.model,
                     "fingerprint": self.fingerprint},
                    sequencer=event.sequencer, metadata=event.metadata, error=str(exc)))
            return Extracted(event.uri, failure=exc)
        except LookalikeError as exc:  # a bad URI, boto3 not installed
            return Extracted(event.uri, failure=exc)


_extractors: dict[tuple[Any, ...], Extractor] = {}
_extractors_lock = threading.Lock()


def default_extractor() -> Extractor:
    """This process's extractor for the current settings: a warm container reuses its model."""
    fresh = Extractor()
    with _extractors_lock:
        return _extractors.setdefault(fresh.key, fresh)


def _optional(message: Message, **fields: Any) -> Message:
    """``message`` with those of ``fields`` that are not None."""
    return {**message, **{k: v for k, v in fields.items() if v is not None}}
