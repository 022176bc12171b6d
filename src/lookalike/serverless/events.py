"""Storage notifications, as S3 and Google Cloud Storage deliver them, read as ObjectEvents.

Only image objects matter, known as a folder's files are, by their name's suffix: any other key
(and a "folder" key ending in ``/``) gives no event. S3 URL-encodes keys in its notifications
(``my+photo%281%29.jpg``), so they are decoded with ``unquote_plus``. S3's ``sequencer`` orders
the events of one key; a GCS object's ``generation`` serves instead, written as 16 hex digits so
that it compares the same way (as a string, later is greater).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import objects
from ..errors import UsageError
from .extractor import ObjectEvent

GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
GCS_DELETED = "google.cloud.storage.object.v1.deleted"


def s3_events(notification: Mapping[str, Any]) -> list[ObjectEvent]:
    """The image events of an S3 event notification (:func:`lookalike.objects.notified_changes`:
    none for the ``s3:TestEvent``, other kinds of event, or keys that are not image names)."""
    try:
        changes = objects.notified_changes(notification)
    except UsageError as exc:
        raise UsageError(f"{exc}: {_excerpt(notification)}") from None
    return [ObjectEvent(c.op, c.uri, c.sequencer) for c in changes]


def sqs_body_events(body: str) -> list[ObjectEvent]:
    """The image events in the body of an SQS message: an S3 event notification, as S3 sends it
    to a queue or wrapped in the envelope of an SNS topic (``{"Type": "Notification",
    "Message": "<the notification>"}``)."""
    try:
        payload = json.loads(body)
        if isinstance(payload, dict) and payload.get("Type") == "Notification":
            payload = json.loads(payload["Message"])
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"An SQS message's body is not an S3 event notification in JSON: "
                         f"{_excerpt(body)}") from None
    if not isinstance(payload, dict):
        raise UsageError(f"An SQS message's body is not an S3 event notification: "
                         f"{_excerpt(body)}")
    return s3_events(payload)


def gcs_event(event_type: str, data: Mapping[str, Any]) -> ObjectEvent | None:
    """The image event of a Cloud Storage CloudEvent (``finalized``: upsert, ``deleted``:
    delete), for the object as GCS's S3-compatible API names it; None for other kinds."""
    op = {GCS_FINALIZED: "upsert", GCS_DELETED: "delete"}.get(event_type)
    if op is None:
        return None
    try:
        bucket, name = data["bucket"], data["name"]
    except (KeyError, TypeError):
        raise UsageError(f"A {event_type} event without bucket and name: "
                         f"{_excerpt(data)}") from None
    if not objects.is_image_key(name):
        return None
    generation = str(data.get("generation") or "")
    sequencer = f"{int(generation):016X}" if generation.isdigit() else None
    return ObjectEvent(op, f"s3://{bucket}/{name}", sequencer)


def _excerpt(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."
