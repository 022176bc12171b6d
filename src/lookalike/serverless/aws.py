"""AWS Lambda: ``lookalike.serverless.aws.handler`` embeds the images S3 announces.

Two ways to wire it (docs/deployment.md, "Serverless extraction"):

- **S3 invokes it** (``{"Records": [{"eventSource": "aws:s3", ...}]}``, asynchronously). A failure
  that may pass raises after the rest is published; Lambda runs the event again (twice), then
  hands it to the function's on-failure destination.
- **S3 → SQS → Lambda** (an event source mapping with ``ReportBatchItemFailures``; the queue may
  also be fed by an SNS topic, whose envelope is unwrapped). One invocation embeds the whole batch
  in one model call; the answer names the records to deliver again, ``{"batchItemFailures":
  [{"itemIdentifier": messageId}]}``: those whose object could not be read, whose body is not an
  S3 notification, or whose messages could not be published. Past the queue's
  ``maxReceiveCount`` such a record moves to its dead-letter queue.

A bad image is not a failure: its message carries ``error``. An object that is gone gives no
message. The messages are published to the queue ``LOOKALIKE_PUBLISH`` names; without it they
are returned, ``{"messages": [...]}`` (beside ``batchItemFailures`` for a batch), for a test or a
Lambda destination.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import LookalikeError, UsageError
from ..objects import S3_TEST_EVENT
from .events import s3_events, sqs_body_events
from .extractor import Message, ObjectEvent, default_extractor
from .outbox import publish, target

log = logging.getLogger("lookalike.serverless")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda entry point, for an S3 notification or an SQS batch of them."""
    del context  # the deadline is the platform's: a batch fits it, or is delivered again
    records = event.get("Records")
    sources = {r.get("eventSource") for r in records if isinstance(r, dict)} \
        if isinstance(records, list) else set()
    if sources == {"aws:sqs"}:
        return _from_queue(records or [])
    if sources <= {"aws:s3"} and (isinstance(records, list) or event.get("Event") == S3_TEST_EVENT):
        return _from_s3(event)
    raise UsageError("lookalike.serverless.aws.handler takes an S3 event notification or an "
                     "SQS batch of them (records with eventSource aws:s3 or aws:sqs); got "
                     f"records from {sorted(map(str, sources)) or 'nowhere'}.")


def _from_s3(event: dict[str, Any]) -> dict[str, Any]:
    extracted = default_extractor().extract(s3_events(event))
    messages = [x.message for x in extracted if x.message is not None]
    spec = target()
    if spec:
        publish(messages, spec)
    failures = [x.failure for x in extracted if x.failure is not None]
    for failure in failures:
        log.warning("%s (the event will be retried)", failure)
    if failures:
        raise failures[0]
    return {"published": len(messages)} if spec else {"messages": messages}


def _from_queue(records: list[dict[str, Any]]) -> dict[str, Any]:
    order: list[str] = []
    events: list[tuple[str, ObjectEvent]] = []
    failed: set[str] = set()
    for record in records:
        record_id = record.get("messageId")
        if not record_id:
            raise UsageError("An SQS record without a messageId: the batch cannot say which "
                             "records failed.")
        order.append(record_id)
        try:
            events += [(record_id, e) for e in sqs_body_events(record.get("body", ""))]
        except UsageError as exc:
            log.error("SQS message %s: %s", record_id, exc)
            failed.add(record_id)
    extracted = default_extractor().extract([e for _, e in events])
    messages: dict[str, list[Message]] = {}
    for (record_id, _), found in zip(events, extracted, strict=True):
        if found.failure is not None:
            log.warning("SQS message %s: cannot embed %s (it will be delivered again): %s",
                        record_id, found.uri, found.failure)
            failed.add(record_id)
        elif found.message is not None:
            messages.setdefault(record_id, []).append(found.message)
    done = [m for record_id in order if record_id not in failed
            for m in messages.get(record_id, [])]
    spec = target()
    if spec:
        try:
            publish(done, spec)
        except LookalikeError as exc:
            log.error("Cannot publish to %s (the batch will be delivered again): %s", spec, exc)
            failed |= set(messages)
    answer: dict[str, Any] = {"batchItemFailures": [
        {"itemIdentifier": record_id} for record_id in order if record_id in failed]}
    if not spec:
        answer["messages"] = done
    return answer
