"""Message queues: where stream events come from, and where an extractor publishes them.

Two kinds, named by a spec:

- ``sqs://QUEUE_URL_OR_NAME[?dlq=NAME]``: Amazon SQS with boto3 (credentials and region the
  standard AWS way; ``LOOKALIKE_SQS_ENDPOINT_URL`` for a compatible server). The dead-letter queue
  is the queue's redrive policy target unless ``dlq`` names one.
- ``kafka://HOST:PORT[,HOST:PORT...]/TOPIC?group=NAME[&dlq=TOPIC][&OPTION=VALUE...]``: Kafka with
  confluent-kafka (librdkafka); any other parameter is a librdkafka option (``security.protocol``,
  ``sasl.mechanism``...). The dead-letter topic is ``TOPIC.dlq`` unless ``dlq`` names one.

A :class:`Source` hands out messages and is told, per batch, which are done (applied, or sent to
the dead-letter destination) and which should come again (a failure that may pass): only then is
anything acknowledged (SQS ``DeleteMessage``, a Kafka offset commit). Delivery is at least once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import UsageError

#: Message attribute (SQS) or header (Kafka) that says why a message was dead-lettered.
REASON = "lookalike-reason"


@dataclass(frozen=True)
class Message:
    """One delivery of a message."""

    body: bytes
    id: str  # for logs and dead letters: the SQS message id, or topic/partition/offset
    attempts: int  # deliveries so far, this one included
    handle: Any = None  # what settling it needs (an SQS receipt handle, a Kafka position)


class Source(Protocol):
    """Where a consumer reads messages from."""

    #: The spec, for people (no secrets).
    name: str
    #: Whether a retry rewinds the queue (a Kafka partition): what was received after the
    #: message to retry comes again, and must not be applied meanwhile.
    ordered: bool

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        """Up to ``max_messages``: the first waited for up to ``wait`` seconds, then those
        already there (a lone message is never held back to fill a batch)."""
        ...

    def settle(self, done: Sequence[Message], retry: Sequence[Message]) -> None:
        """Acknowledge ``done`` and have ``retry`` delivered again later. Called once per
        batch, after what was done is committed."""
        ...

    def dead_letter(self, message: Message, reason: str) -> None:
        """Send ``message`` to the dead-letter destination with ``reason`` (it is then done)."""
        ...

    def lag(self) -> int | None:
        """Messages waiting, as far as the queue can tell."""
        ...

    def close(self) -> None: ...


class Publisher(Protocol):
    """Where an extractor publishes messages."""

    name: str

    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        """Send ``bodies`` (Kafka: with ``keys``, which pick the partition); raises when any
        could not be sent."""
        ...

    def close(self) -> None: ...


def open_source(spec: str, *, wait: float = 20.0) -> Source:
    """The queue ``spec`` names, ready to consume. ``wait``: how long a request may block."""
    scheme = _scheme(spec)
    if scheme == "sqs":
        from .sqs import SqsSource

        return SqsSource(spec)
    from .kafka import KafkaSource

    return KafkaSource(spec, wait=wait)


def publisher(spec: str) -> Publisher:
    """A publisher to the queue ``spec`` names (its ``dlq`` and ``group`` are not used)."""
    if _scheme(spec) == "sqs":
        from .sqs import SqsPublisher

        return SqsPublisher(spec)
    from .kafka import KafkaPublisher

    return KafkaPublisher(spec)


def _scheme(spec: str) -> str:
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme not in ("sqs", "kafka"):
        raise UsageError(
            f"Unknown queue {spec!r}: use sqs://QUEUE_URL_OR_NAME or "
            "kafka://HOST:PORT/TOPIC?group=NAME.")
    return scheme
