"""A stateless extractor: embeds the image at a URI and says so in a message for the consumer.

``lookalike consume`` writes a collection; this side only reads objects and runs the model, so it
scales out as functions do (AWS Lambda: :mod:`lookalike.serverless.aws`; Cloud Run with Eventarc:
:mod:`lookalike.serverless.gcp`). The model is loaded once per process, on first use, from the
settings (``LOOKALIKE_MODEL``...): a warm instance reuses it. ``lookalike serve`` offers the same
embedding for bytes as ``POST /embed``.

The messages, one JSON object each (the consumer's contract)::

    {"op": "upsert", "uri": "s3://bucket/key", "model": "<model name>",
     "fingerprint": "<embedding fingerprint, as the collection's manifest records it>",
     "vector": [<floats: L2-normalised, the model's dimension>],
     "content_hash": "<lookalike.imaging.content_hash of the bytes>", "size": <bytes>,
     "etag": "<unquoted ETag>", "mtime_ns": <int>, "width": W, "height": H,
     "sequencer": "<the S3 event's sequencer, when the event had one>",
     "metadata": {<optional>}}

    {"op": "delete", "uri": "s3://bucket/key", "sequencer": "<when the event had one>"}

Each vector is the one `lookalike index` gives the same bytes with the same model. An object that
is not a usable image gives the upsert without ``vector``, ``width`` and ``height`` but with
``error`` (why, as a failed row of `lookalike index` says it; ``content_hash``, ``size``, ``etag``
and ``mtime_ns`` are left out too when the object was over ``max_file_bytes`` and not read). An
object that is gone gives nothing: its delete event follows. A failure that may pass if retried
(the store unreachable) raises, so the platform delivers the event again. Fields that are None are
left out, never sent as null.
"""

from __future__ import annotations

from .extractor import (
    EmbedResult,
    Extracted,
    Extractor,
    Message,
    ObjectEvent,
    default_extractor,
    embed_bytes,
)

__all__ = [
    "EmbedResult",
    "Extracted",
    "Extractor",
    "Message",
    "ObjectEvent",
    "default_extractor",
    "embed_bytes",
]
