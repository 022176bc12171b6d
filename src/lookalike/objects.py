"""Images in object stores: ``s3://bucket/key`` wherever a path is accepted.

boto3 finds credentials and region the standard AWS way (environment, ``~/.aws``, instance or
task roles). ``LOOKALIKE_S3_ENDPOINT_URL`` points it at an S3-compatible store instead (MinIO,
Ceph, Google Cloud Storage's XML API with HMAC keys). ``s3://bucket/prefix/`` (or the bucket
alone) means every image object under it, as a folder does; ``s3://bucket/key`` one object.

An object is known by its ETag and size, as a file is by its modification time and size: an
overwritten object gets a new ETag, so indexing skips exactly the unchanged ones. Reads can ask
for the ETag that was indexed (``If-Match``): a changed object is then refused, never served.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from .errors import MissingDependencyError, ObjectStoreError, UsageError
from .types import IMAGE_EXTENSIONS

SCHEME = "s3://"
ENDPOINT_ENV = "LOOKALIKE_S3_ENDPOINT_URL"
S3_TEST_EVENT = "s3:TestEvent"  # what S3 sends when notifications are switched on
_MISSING = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                     "ExpiredToken", "InvalidToken", "AllAccessDisabled"})
_CHANGED = frozenset({"PreconditionFailed", "412"})
# S3 event names, without "s3:", and what each means for the object's image.
_NOTIFIED_OPS = {"ObjectCreated": "upsert", "ObjectRemoved": "delete",
                 "LifecycleExpiration": "delete"}


def is_object_uri(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` names objects in an object store rather than a local path."""
    return isinstance(text, str) and text.startswith(SCHEME)


@dataclass(frozen=True)
class ObjectURI:
    """A parsed ``s3://bucket/key``; an empty key or one ending in ``/`` is a prefix."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str) -> ObjectURI:
        bucket, _, key = text[len(SCHEME):].partition("/") if is_object_uri(text) else ("", "", "")
        if not bucket or any(c in bucket for c in "?#\\ "):
            raise UsageError(f"Invalid object URI {text!r}: expected s3://bucket/key or "
                             "s3://bucket/prefix/.")
        return cls(bucket, key)

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    """What identifies one version of an object: its ETag (unquoted), size and time."""

    uri: str
    size: int
    etag: str
    mtime_ns: int


_clients: dict[tuple[int, str | None], Any] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class ObjectChange:
    """An image object that changed, as an event notification says: ``upsert`` (created or
    overwritten) or ``delete``; ``sequencer`` orders the changes of one key (S3's: hex)."""

    op: str
    uri: str
    sequencer: str | None = None


def notified_changes(notification: Any) -> list[ObjectChange]:
    """The image objects an S3 event notification (``{"Records": [...]}``) says changed. Keys
    arrive URL-encoded (``my+photo%281%29.jpg``) and are decoded. None for the ``s3:TestEvent``
    S3 sends when notifications are switched on, for other kinds of event (restores, replication,
    tagging), nor for keys that are not image names (as in a folder). UsageError for a
    notification that is not one."""
    if not isinstance(notification, dict):
        raise UsageError("not an S3 event notification (not a JSON object)")
    if notification.get("Event") == S3_TEST_EVENT:
        return []
    records = notification.get("Records")
    if not isinstance(records, list):
        raise UsageError("not an S3 event notification (no Records list)")
    found = []
    for record in records:
        try:
            if record.get("eventSource", "aws:s3") != "aws:s3":
                raise TypeError
            name = str(record["eventName"]).removeprefix("s3:")
            bucket = record["s3"]["bucket"]["name"]
            item = record["s3"]["object"]
            key = unquote_plus(item["key"])
        except (AttributeError, KeyError, TypeError):
            raise UsageError("not an S3 event record (eventSource aws:s3, eventName, "
                             "s3.bucket.name and s3.object.key are needed)") from None
        op = _NOTIFIED_OPS.get(name.partition(":")[0])
        if op is not None and is_image_key(key):
            found.append(ObjectChange(op, f"{SCHEME}{bucket}/{key}", item.get("sequencer")))
    return found


def client() -> Any:
    """This process's S3 client (boto3 clients are thread-safe; a forked child makes its own)."""
    endpoint = os.environ.get(ENDPOINT_ENV) or None
    key = (os.getpid(), endpoint)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise MissingDependencyError(
                    "boto3", "Images in S3 (s3:// URIs)", "pip install 'lookalike[s3]'") from None
            config = Config(connect_timeout=5, read_timeout=30,
                            retries={"max_attempts": 4, "mode": "standard"})
            found = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
            _clients[key] = found
        return found


def listing(uri: str) -> Iterator[ObjectInfo]:
    """The image objects ``uri`` names, by key: everything under a prefix (hidden names, those
    with a path part starting with a dot, left out, as in a folder), or the one object."""
    where = ObjectURI.parse(uri)
    if not where.is_prefix:
        yield head(uri)
        return
    with translated(uri):
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=where.bucket,
                                                                    Prefix=where.key)
        for page in pages:
            for item in page.get("Contents", ()):
                key = item["Key"]
                parts = key[len(where.key):].split("/")
                if any(p.startswith(".") for p in parts) or not is_image_key(key):
                    continue
                yield ObjectInfo(f"{SCHEME}{where.bucket}/{key}", int(item["Size"]),
                                 _etag(item["ETag"]), _ns(item["LastModified"]))


def exists(uri: str) -> bool:
    """Whether ``uri`` names an object, or a prefix with any object under it (the bucket alone:
    whether the bucket exists). ObjectStoreError when the store cannot say."""
    where = ObjectURI.parse(uri)
    try:
        if not where.is_prefix:
            head(uri)
            return True
        with translated(uri):
            found = client().list_objects_v2(Bucket=where.bucket, Prefix=where.key, MaxKeys=1)
    except ObjectStoreError as exc:
        if exc.reason == "missing":
            return False
        raise
    return where.key == "" or found.get("KeyCount", 0) > 0


def head(uri: str) -> ObjectInfo:
    """The object's ETag, size and time; ObjectStoreError (``missing``) when there is none."""
    where = ObjectURI.parse(uri)
    with translated(uri):
        return _info(uri, client().head_object(Bucket=where.bucket, Key=where.key))


def read(uri: str, max_bytes: int, *, etag: str | None = None) -> tuple[bytes, ObjectInfo]:
    """The bytes of an object of at most ``max_bytes``, and which version they are. With
    ``etag``, only that version: another is ObjectStoreError (``changed``)."""
    body, info = open_object(uri, etag=etag)
    with contextlib.closing(body), translated(uri):
        if info.size > max_bytes:
            raise ObjectStoreError(
                f"{uri} is over the size limit of {max_bytes:,} bytes; raise "
                "LOOKALIKE_MAX_FILE_BYTES to allow it", "too_large")
        return body.read(max_bytes + 1), info


def open_object(uri: str, *, etag: str | None = None) -> tuple[Any, ObjectInfo]:
    """The object's body, a stream the caller reads (``iter_chunks``) and closes, and its
    version. With ``etag``, only that version (see :func:`read`)."""
    where = ObjectURI.parse(uri)
    match = {"IfMatch": f'"{etag}"'} if etag else {}
    with translated(uri):
        found = client().get_object(Bucket=where.bucket, Key=where.key, **match)
    return found["Body"], _info(uri, found)


@contextlib.contextmanager
def translated(uri: str) -> Iterator[None]:
    """Turns what boto3 raises about ``uri`` into one ObjectStoreError that says what to do."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _MISSING:
            what = "bucket" if code == "NoSuchBucket" else "object"
            raise ObjectStoreError(f"{uri}: no such {what}", "missing") from None
        if code in _CHANGED:
            raise ObjectStoreError(f"{uri} has changed since it was indexed: run `lookalike "
                                   "index` on it again", "changed") from None
        if code in _DENIED:
            raise ObjectStoreError(
                f"{uri}: access denied ({code}); check the AWS credentials and the bucket's "
                "policy", "denied") from None
        raise ObjectStoreError(f"{uri}: the object store refused the request "
                               f"({code}: {error.get('Message', '')})", "failed") from None
    except NoCredentialsError:
        raise ObjectStoreError(
            f"{uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or a profile, or a role)", "denied") from None
    except EndpointConnectionError as exc:
        raise ObjectStoreError(
            f"{uri}: cannot reach the object store at {exc.kwargs.get('endpoint_url')}; is it "
            f"running, and is {ENDPOINT_ENV} right?", "unreachable") from None
    except BotoCoreError as exc:
        raise ObjectStoreError(f"{uri}: {exc}", "unreachable") from None


def _info(uri: str, response: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(uri, int(response["ContentLength"]), _etag(response["ETag"]),
                      _ns(response["LastModified"]))


def _etag(text: str) -> str:
    return text.strip('"')


def _ns(when: Any) -> int:
    return int(when.timestamp() * 1_000_000) * 1000


def is_image_key(key: str) -> bool:
    """Whether an object named ``key`` is an image, as a file of that name in a folder is."""
    return os.path.splitext(key)[1].lower() in IMAGE_EXTENSIONS
