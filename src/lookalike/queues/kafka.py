"""Kafka (confluent-kafka): ``kafka://HOST:PORT[,...]/TOPIC?group=NAME[&dlq=TOPIC][&OPTION=VALUE]``.

Offsets are committed by hand, after what a batch did is committed to the collection: a consumer
killed in between gets the batch again. A partition is a sequence, so a message to retry rewinds
its partition to it (what follows comes again, and is found already applied) and nothing past it
is committed; the consumer gives up on it after a few tries and sends it to the dead-letter topic
(a ``lookalike-reason`` header says why), so one bad message stalls its partition for seconds,
never for good.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..errors import MissingDependencyError, QueueError, UsageError
from . import REASON, Message

#: librdkafka settings lookalike chooses (a spec's parameters override them): a consumer that
#: dies is noticed, and its partitions handed on, within seconds rather than librdkafka's 45.
CONSUMER_DEFAULTS = {"auto.offset.reset": "earliest", "session.timeout.ms": "10000",
                     "heartbeat.interval.ms": "1000"}


def _kafka() -> Any:
    try:
        import confluent_kafka
        import confluent_kafka.admin  # noqa: F401  (a submodule the package does not import)
    except ImportError:
        raise MissingDependencyError("confluent-kafka", "Kafka queues",
                                     "pip install 'lookalike[kafka]'") from None
    return confluent_kafka


def parse(spec: str) -> tuple[str, str, dict[str, str]]:
    """The bootstrap servers, topic and parameters in ``spec``."""
    parts = urlsplit(spec)
    topic = parts.path.strip("/")
    params = dict(parse_qsl(parts.query))
    if not parts.netloc or not topic or "/" in topic:
        raise UsageError(f"Invalid Kafka queue {spec!r}: expected "
                         "kafka://HOST:PORT[,HOST:PORT...]/TOPIC?group=NAME.")
    return parts.netloc, topic, params


#: Where librdkafka's consumer-only settings start: a producer given one warns.
_CONSUMER_ONLY = ("session.", "heartbeat.", "auto.", "group.", "max.poll.", "enable.auto.",
                  "fetch.", "partition.assignment", "isolation.", "check.crcs")


def _options(servers: str, params: dict[str, str], *, consumer: bool = True) -> dict[str, Any]:
    options: dict[str, Any] = {k: v for k, v in params.items() if k not in ("group", "dlq")
                               and (consumer or not k.startswith(_CONSUMER_ONLY))}
    return {**options, "bootstrap.servers": servers, "logger": _LOG}


class _OncePerMinute(logging.Filter):
    """librdkafka logs every failed reconnection (several a second while a broker is down):
    each distinct message passes once a minute."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = re.sub(r"\d+ms|\d+/\d+", "", record.getMessage())  # its counters vary
        now = time.monotonic()
        if now - self._seen.get(text, -60.0) < 60.0:
            return False
        self._seen[text] = now
        return True


#: Where librdkafka's own log goes (instead of straight to stderr), thinned out.
_LOG = logging.getLogger("lookalike.kafka")
_LOG.addFilter(_OncePerMinute())


def _client(kind: str, options: dict[str, Any], spec: str) -> Any:
    """A confluent-kafka client; an option librdkafka does not take is the user's mistake."""
    kafka = _kafka()
    make = kafka.admin.AdminClient if kind == "AdminClient" else getattr(kafka, kind)
    try:
        return make(options)
    except (kafka.KafkaException, ValueError, TypeError) as exc:
        error = exc.args[0] if exc.args else exc
        detail = error.str() if hasattr(error, "str") else str(error)
        raise UsageError(f"Kafka refuses the options of {spec!r}: {detail}. Parameters other "
                         "than group and dlq are librdkafka settings (see its CONFIGURATION.md)."
                         ) from None


class KafkaSource:
    """Consumes a topic in a consumer group (see the module docstring)."""

    ordered = True

    def __init__(self, spec: str, *, wait: float = 20.0) -> None:
        kafka = _kafka()
        servers, self.topic, params = parse(spec)
        if not params.get("group"):
            raise UsageError(f"Kafka queue {spec!r} needs a consumer group: add ?group=NAME "
                             "(consumers sharing a group share the topic's partitions).")
        self.name = f"kafka://{servers}/{self.topic}?group={params['group']}"
        self.dlq = params.get("dlq") or f"{self.topic}.dlq"
        self._check_topics(kafka, _options(servers, params, consumer=False), wait, spec)
        options = _options(servers, params)
        self._consumer = _client("Consumer", {**CONSUMER_DEFAULTS, **options,
                                              "group.id": params["group"],
                                              "enable.auto.commit": False,
                                              "enable.auto.offset.store": False}, spec)
        self._producer = _client("Producer", _options(servers, params, consumer=False), spec)
        self._consumer.subscribe([self.topic])
        self._attempts: dict[tuple[int, int], int] = {}

    def _check_topics(self, kafka: Any, options: dict[str, Any], wait: float,
                      spec: str) -> None:
        admin = _client("AdminClient", options, spec)
        try:
            found = admin.list_topics(timeout=max(wait, 5.0)).topics
        except kafka.KafkaException as exc:
            raise QueueError(f"Cannot reach Kafka at {options['bootstrap.servers']}: "
                             f"{exc.args[0]}. Is it running?") from None
        if self.topic not in found:
            raise UsageError(f"No Kafka topic {self.topic!r} at {options['bootstrap.servers']}: "
                             "create it, or check the name.")
        if self.dlq not in found:
            futures = admin.create_topics([kafka.admin.NewTopic(self.dlq, 1)])
            try:
                futures[self.dlq].result(max(wait, 5.0))
            except kafka.KafkaException as exc:
                if exc.args[0].code() != kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise QueueError(f"Cannot create the dead-letter topic {self.dlq!r}: "
                                     f"{exc.args[0]}. Create it, or name one with &dlq=.") from None

    def receive(self, max_messages: int, wait: float) -> list[Message]:
        kafka = _kafka()
        found: list[Message] = []
        deadline = time.monotonic() + wait
        while len(found) < max_messages:
            # consume() returns when it has all it was asked for or its time is up: ask in
            # short slices until the first message, then take only what has arrived.
            left = deadline - time.monotonic()
            slice_ = 0.0 if found else min(0.1, max(left, 0.0))
            got = self._consumer.consume(num_messages=max_messages - len(found), timeout=slice_)
            for m in got:
                error = m.error()
                if error is not None:
                    if error.fatal():
                        raise QueueError(f"Kafka consumer of {self.name} failed: {error}")
                    continue  # librdkafka retries by itself; it reports for information
                key = (m.partition(), m.offset())
                self._attempts[key] = attempts = self._attempts.get(key, 0) + 1
                found.append(Message(m.value() or b"", f"{m.topic()}/{key[0]}/{key[1]}",
                                     attempts, kafka.TopicPartition(m.topic(), *key)))
            if (found and not got) or (not found and left <= 0):
                break
        return found

    def settle(self, done: Sequence[Message], retry: Sequence[Message]) -> None:
        kafka = _kafka()
        commit: dict[int, int] = {}
        rewind: dict[int, int] = {}
        for m in done:
            p = m.handle.partition
            commit[p] = max(commit.get(p, 0), m.handle.offset + 1)
            self._attempts.pop((p, m.handle.offset), None)
        for m in retry:
            p = m.handle.partition
            rewind[p] = min(rewind.get(p, m.handle.offset), m.handle.offset)
        commit.update(rewind)  # never past a message still to do
        for p, offset in rewind.items():
            self._consumer.seek(kafka.TopicPartition(self.topic, p, offset))
        if not commit:
            return
        try:
            self._consumer.commit(offsets=[kafka.TopicPartition(self.topic, p, o)
                                           for p, o in commit.items()], asynchronous=False)
        except kafka.KafkaException as exc:
            # A rebalance took the partition away: its new owner gets the batch again.
            raise QueueError(f"Kafka did not take the offsets for {self.name}: "
                             f"{exc.args[0]}; the batch will be delivered again.") from None

    def dead_letter(self, message: Message, reason: str) -> None:
        _send(self._producer, self.dlq, [message.body], None,
              [[(REASON, reason.encode()), ("lookalike-source", message.id.encode())]])

    def lag(self) -> int | None:
        kafka = _kafka()
        try:
            assigned = self._consumer.assignment()
            if not assigned:
                return None
            total = 0
            for tp in self._consumer.position(assigned):
                # The high watermarks as the last fetches brought them: no broker round trip.
                low, high = self._consumer.get_watermark_offsets(
                    kafka.TopicPartition(tp.topic, tp.partition), cached=True)
                if high < 0:
                    return None
                total += max(0, high - (tp.offset if tp.offset >= 0 else max(low, 0)))
            return total
        except kafka.KafkaException:
            return None

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(10)


class KafkaPublisher:
    """Produces to a topic."""

    def __init__(self, spec: str) -> None:
        servers, self.topic, params = parse(spec)
        self.name = f"kafka://{servers}/{self.topic}"
        self._producer = _client("Producer", _options(servers, params, consumer=False), spec)

    def publish(self, bodies: Sequence[bytes], keys: Sequence[str] | None = None) -> None:
        _send(self._producer, self.topic, bodies, keys, None)

    def close(self) -> None:
        self._producer.flush(10)


def _send(producer: Any, topic: str, bodies: Sequence[bytes], keys: Sequence[str] | None,
          headers: Sequence[list[tuple[str, bytes]]] | None) -> None:
    failed: list[str] = []

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            failed.append(str(error))

    for n, body in enumerate(bodies):
        producer.produce(topic, value=body, key=keys[n].encode() if keys else None,
                         headers=headers[n] if headers else None, on_delivery=delivered)
    left = producer.flush(30)
    if failed or left:
        raise QueueError(f"Kafka did not take {len(failed) + left} message(s) for {topic!r}: "
                         f"{failed[0] if failed else 'timed out'}.")
