"""Google Cloud: functions for Cloud Run (or Cloud Functions) behind an Eventarc trigger on a
bucket's ``google.cloud.storage.object.v1.finalized`` events (and ``deleted``, if wanted).

Objects are read through Cloud Storage's S3-compatible XML API, with boto3 as on AWS: set
``LOOKALIKE_S3_ENDPOINT_URL=https://storage.googleapis.com`` and an HMAC key of the service
account as ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``. A message names the object as that
API does, ``s3://BUCKET/NAME``, and its ``sequencer`` is the object's generation (16 hex digits).

Two targets, one behaviour:

- ``on_storage_event`` (``--signature-type cloudevent``) publishes to the queue
  ``LOOKALIKE_PUBLISH``. The framework answers every CloudEvent with a bare ``OK``, so without a
  queue the messages are written to standard output, one JSON object a line (Cloud Logging).
- ``on_storage_request`` (``--signature-type http``) takes the same CloudEvent as an HTTP
  request, and answers ``{"messages": [...]}`` without a queue, ``{"published": n}`` with one.

A failure that may pass raises: the answer is a 500 and Eventarc delivers the event again, with
back-off. A delete event for a name that exists again (an overwrite: GCS sends the old
generation's ``deleted`` after the new one's ``finalized``, in no promised order) is dropped.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .. import objects
from ..errors import MissingDependencyError, ObjectStoreError
from .events import gcs_event
from .extractor import Message, default_extractor
from .outbox import encode, publish, target

try:
    import functions_framework
    from cloudevents.http import from_http
except ImportError:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("functions-framework", "The Cloud Run extractor",
                                 "pip install 'lookalike[serverless]'") from None


@functions_framework.cloud_event
def on_storage_event(event: Any) -> None:
    """The CloudEvents entry point: publishes, or prints, the event's message."""
    messages = messages_for(event["type"], event.data)
    spec = target()
    if spec:
        publish(messages, spec)
        return
    for message in messages:  # the only answer the framework lets a CloudEvent function give
        sys.stdout.write(encode(message).decode("utf-8") + "\n")
    sys.stdout.flush()


@functions_framework.http
def on_storage_request(request: Any) -> dict[str, Any]:
    """The HTTP entry point: the CloudEvent in the request (binary or structured mode)."""
    event = from_http(request.headers, request.get_data())
    messages = messages_for(event["type"], event.data)
    spec = target()
    if spec:
        publish(messages, spec)
        return {"published": len(messages)}
    return {"messages": messages}


def messages_for(event_type: str, data: Any) -> list[Message]:
    """What a Cloud Storage event says to the consumer: nothing, a delete, or an upsert."""
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    event = gcs_event(event_type, data)
    if event is None:
        return []
    if event.op == "delete":
        try:
            objects.head(event.uri)
        except ObjectStoreError as exc:
            if exc.reason != "missing":
                raise
            return [event.delete_message()]
        return []  # overwritten: the new generation's finalized event tells the consumer
    message = default_extractor().embed_uri(event.uri, sequencer=event.sequencer)
    return [message] if message is not None else []
