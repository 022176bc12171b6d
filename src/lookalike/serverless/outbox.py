"""Where the adapters' messages go: the queue ``LOOKALIKE_PUBLISH`` names, else back to the caller.

``LOOKALIKE_PUBLISH`` is a queue spec, ``sqs://QUEUE_URL_OR_NAME`` or ``kafka://HOST:PORT/TOPIC``
(:func:`lookalike.queues.publisher`). Each message is one JSON object, keyed by its URI, so a
Kafka topic keeps the messages of one object in one partition, in order. The publisher is made
once per process and kept, as the model is: a warm container reuses its connection.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from .extractor import Message

PUBLISH_ENV = "LOOKALIKE_PUBLISH"

_publishers: dict[str, Any] = {}
_publishers_lock = threading.Lock()


def target() -> str | None:
    """The queue spec messages are published to; None: the adapters return them instead."""
    return os.environ.get(PUBLISH_ENV) or None


def encode(message: Message) -> bytes:
    """A message as it goes on the queue: compact, strict JSON in UTF-8."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def publish(messages: list[Message], spec: str) -> None:
    """Publish ``messages`` to the queue ``spec``; raises (a LookalikeError) when the queue does
    not take them all, and then any of them may have been published."""
    if messages:
        publisher(spec).publish([encode(m) for m in messages], keys=[m["uri"] for m in messages])


def publisher(spec: str) -> Any:
    """This process's publisher to ``spec``, made on first use."""
    with _publishers_lock:
        found = _publishers.get(spec)
        if found is None:
            from ..queues import publisher as open_publisher

            found = _publishers[spec] = open_publisher(spec)
        return found


def close() -> None:
    """Close this process's publishers (flushing what they hold) and forget them."""
    with _publishers_lock:
        found = list(_publishers.values())
        _publishers.clear()
    for one in found:
        one.close()
