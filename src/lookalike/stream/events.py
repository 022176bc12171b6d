"""The messages ``lookalike consume`` understands, read into :class:`Event` values.

1. **S3 event notifications** (``{"Records": [{"eventSource": "aws:s3", ...}]}``): an
   ``ObjectCreated:*`` record is an upsert, ``ObjectRemoved:*`` (and ``LifecycleExpiration:*``)
   a delete, of ``s3://BUCKET/KEY`` when KEY is an image name, as in a folder; keys arrive
   URL-encoded (``hello+world.jpg``) and are decoded
   (:func:`lookalike.objects.notified_changes`). The ``s3:TestEvent`` is ignored. The same
   notifications wrapped by SNS (``{"Type": "Notification", "Message": "..."}``, raw delivery
   off) or sent through EventBridge (``"source": "aws.s3"``, ``"detail-type": "Object Created"`` /
   ``"Object Deleted"``; EventBridge keys are taken as they are) are read too.
2. **Operations**: ``{"op": "upsert" | "delete", "uri": "s3://... or /path", "metadata": {...},
   "sequencer": "..."}``. ``metadata`` (upserts only) replaces the image's metadata.
3. **Precomputed embeddings**, as ``lookalike.serverless`` publishes them: an upsert with
   ``"vector"`` (a list of floats), ``"fingerprint"`` (the model's, which must be the collection's),
   ``"content_hash"`` and the object's ``"size"``, ``"etag"``, ``"mtime_ns"``, ``"width"``,
   ``"height"``; or with ``"error"`` instead of a vector, for an image the extractor could not
   read (stored as a failed image, as indexing does).

**Order.** Notifications may arrive out of order, and more than once. Each carries S3's
``sequencer``, a hex number that grows with every change to one key; it becomes the event's
``position`` (left-padded with zeros, as S3 says to compare them). An event whose position is not
greater than that of the last event applied to its uri is stale and skipped: a late
``ObjectCreated`` never brings back a deleted image, and a redelivered event changes nothing. An
event without a sequencer (moto's notifications have none; operations may leave it out) is applied
in arrival order. Operations may carry ``"sequencer"`` as hex text or a non-negative integer.

A message that can never be applied raises :class:`PoisonMessage`, and goes to the dead letters.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import LookalikeError, UsageError
from ..objects import is_image_key, notified_changes

_HEX = re.compile(r"[0-9A-Fa-f]{1,64}")
_POSITION_DIGITS = 64


class PoisonMessage(LookalikeError):
    """A message that no retry can apply: not JSON, not a known shape, or not for this
    collection (another model's vectors)."""


@dataclass(frozen=True)
class Event:
    """One change to apply: an upsert or a delete of the image at ``uri``."""

    op: Literal["upsert", "delete"]
    uri: str
    position: str | None = None  # the padded sequencer, when the message had one
    metadata: dict[str, Any] | None = None
    #: From an extractor: the embedding (or the reason there is none) and the object's facts.
    vector: np.ndarray | None = field(default=None, compare=False)
    error: str | None = None
    fingerprint: str | None = None
    facts: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def precomputed(self) -> bool:
        return self.vector is not None or self.error is not None


def parse(body: bytes) -> list[Event]:
    """The events in one message (none for a test event); raises PoisonMessage."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoisonMessage(f"not JSON: {exc}") from None
    return _events(data, depth=0)


def _events(data: Any, depth: int) -> list[Event]:
    if not isinstance(data, dict):
        raise PoisonMessage("not a JSON object")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str) and depth < 2:
        return parse_nested(data["Message"], depth)  # SNS
    if data.get("Event") == "s3:TestEvent":
        return []
    if isinstance(data.get("Records"), list):
        try:
            changes = notified_changes(data)
        except UsageError as exc:
            raise PoisonMessage(str(exc)) from None
        return [Event("upsert" if c.op == "upsert" else "delete", c.uri, position(c.sequencer))
                for c in changes]
    if data.get("source") == "aws.s3" and isinstance(data.get("detail"), dict):
        return _eventbridge(data)
    if "op" in data:
        return [_operation(data)]
    raise PoisonMessage("not an S3 event notification nor a lookalike operation "
                        '({"op": "upsert" | "delete", "uri": ...})')


def parse_nested(text: str, depth: int) -> list[Event]:
    try:
        return _events(json.loads(text), depth + 1)
    except json.JSONDecodeError as exc:
        raise PoisonMessage(f"the SNS message is not JSON: {exc}") from None


def _eventbridge(data: dict[str, Any]) -> list[Event]:
    kind = data.get("detail-type")
    if kind not in ("Object Created", "Object Deleted"):
        return []
    try:
        bucket = data["detail"]["bucket"]["name"]
        obj = data["detail"]["object"]
        key = obj["key"]
    except (KeyError, TypeError):
        raise PoisonMessage("an EventBridge S3 event without detail.bucket.name and "
                            "detail.object.key") from None
    if not is_image_key(key):
        return []
    op: Literal["upsert", "delete"] = "upsert" if kind == "Object Created" else "delete"
    return [Event(op, f"s3://{bucket}/{key}", position(obj.get("sequencer")))]


def _operation(data: dict[str, Any]) -> Event:
    op, uri = data.get("op"), data.get("uri")
    if op not in ("upsert", "delete"):
        raise PoisonMessage(f'unknown op {op!r}: use "upsert" or "delete"')
    if not isinstance(uri, str) or not uri:
        raise PoisonMessage('an operation needs "uri", a non-empty string')
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise PoisonMessage('"metadata" must be a JSON object')
    at = position(data.get("sequencer"))
    if op == "delete":
        return Event("delete", uri, at)
    vector, error = data.get("vector"), data.get("error")
    if vector is None and error is None:
        return Event("upsert", uri, at, metadata)
    fingerprint = data.get("fingerprint")
    if not isinstance(fingerprint, str):
        raise PoisonMessage('a precomputed embedding needs "fingerprint", the model\'s')
    facts = {k: data.get(k) for k in ("content_hash", "size", "etag", "mtime_ns", "width",
                                      "height")}
    if error is not None:
        return Event("upsert", uri, at, metadata, None, str(error), fingerprint, facts)
    if (not isinstance(vector, list) or not vector
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vector)):
        raise PoisonMessage('"vector" must be a non-empty list of finite numbers')
    if not isinstance(facts["content_hash"], str):
        raise PoisonMessage('a precomputed embedding needs "content_hash"')
    return Event("upsert", uri, at, metadata, np.asarray(vector, np.float32), None, fingerprint,
                 facts)


def position(sequencer: Any) -> str | None:
    """A sequencer as a position that compares as text: upper-case hex, zero-padded."""
    if sequencer is None:
        return None
    if isinstance(sequencer, int) and not isinstance(sequencer, bool) and sequencer >= 0:
        sequencer = format(sequencer, "X")
    if not isinstance(sequencer, str) or not _HEX.fullmatch(sequencer):
        raise PoisonMessage(f"sequencer {sequencer!r} is not a hex number of at most "
                            f"{_POSITION_DIGITS} digits")
    return sequencer.upper().rjust(_POSITION_DIGITS, "0")


def newest(events: list[Event]) -> dict[str, Event]:
    """The event that decides each uri's state, of several in arrival order: the one with the
    greatest position; one without a position is newer than whatever arrived before it."""
    found: dict[str, Event] = {}
    for event in events:
        held = found.get(event.uri)
        if (held is None or event.position is None or held.position is None
                or event.position > held.position):
            found[event.uri] = event
    return found
