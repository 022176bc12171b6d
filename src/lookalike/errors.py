"""One exception tree. Every message says what went wrong and what to do about it."""

from __future__ import annotations

import re


class LookalikeError(Exception):
    """Root of every error lookalike raises on purpose."""

    #: Exit status the CLI uses: 2 for misuse (fix the command), 1 for a failure at run time.
    exit_code = 1


class UsageError(LookalikeError):
    """The request itself is wrong: a bad value, an unknown name, a missing thing."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A name looked up in a registry (model, index backend) does not exist."""

    def __init__(self, kind: str, name: str, choices: list[str], close: list[str]) -> None:
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(
            f"Unknown {kind} {name!r}.{hint} Available: {', '.join(sorted(choices))}."
        )
        self.name = name
        self.choices = choices


class CollectionNotFoundError(UsageError):
    """No collection exists at the given path."""


class CollectionExistsError(UsageError):
    """A collection already exists where a new one was to be created."""


class ModelMismatchError(UsageError):
    """The collection was built with another model than the one asked for."""


class InvalidSpecError(UsageError):
    """An index specification string cannot be parsed or is not supported."""


class ImageNotFoundError(UsageError):
    """An image id or path is not in the collection."""


class MissingDependencyError(LookalikeError):
    """An optional package is needed for this feature and is not installed."""

    def __init__(self, package: str, feature: str, install: str) -> None:
        super().__init__(f"{feature} needs the {package!r} package: run `{install}`.")
        self.package = package


class WeightsError(LookalikeError):
    """Model weights cannot be found, read or matched to the architecture."""


class DecodeError(LookalikeError):
    """A file or byte string is not an image lookalike can read (the message says why)."""

    #: Why, for callers that map it to a status: ``empty``, ``not_image``, ``corrupt``,
    #: ``too_many_pixels``, ``unreadable`` or ``needs_decoder``.
    def __init__(self, message: str, reason: str = "corrupt") -> None:
        super().__init__(message)
        self.reason = reason


class CollectionLockedError(LookalikeError):
    """Another process is writing to the collection."""


class StoreUnavailableError(LookalikeError):
    """The metadata store (a PostgreSQL server) cannot be reached or refuses the collection."""


class IndexUnavailableError(LookalikeError):
    """The vector database (Milvus, Qdrant) cannot be reached or refuses a request."""


class SparkJobError(LookalikeError):
    """A Spark job of a backfill failed: a task raised, or the cluster went away."""


class PayloadTooLargeError(UsageError):
    """An upload is larger than the configured limit."""


class CorruptCollectionError(LookalikeError):
    """Files of a collection are unreadable or disagree with each other."""


class BusyError(LookalikeError):
    """A shared limit (the decode memory budget) stayed full for as long as a request waits."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReadOnlyCollectionError(LookalikeError):
    """The collection's folder or disk is read-only: it can be searched, not changed."""


class DiskWriteError(LookalikeError):
    """A file of the collection could not be written: the disk is full, or failing.

    Writes are transactions and files are replaced by rename, so whatever was committed before
    is intact: free some space and run the same command again.
    """

    @classmethod
    def writing(cls, path: object, exc: BaseException) -> DiskWriteError:
        reason = getattr(exc, "strerror", None) or str(exc)
        found = re.search(r"\(([^()]+)\)\s*$", reason)  # Faiss ends its messages "(strerror)"
        reason = found.group(1) if found and len(reason) > 120 else reason
        return cls(f"Could not write {path}: {reason}. What was committed before is intact: "
                   "free some space (or fix the disk) and run the command again.")


class ImageFileError(LookalikeError):
    """An indexed image's file is no longer the file that was indexed (the message says how)."""

    #: ``missing``: gone, or no longer a regular file; ``changed``: its size, modification time
    #: or (through a symlink) content differ from what was indexed.
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ObjectStoreError(LookalikeError):
    """An object store (S3 or compatible) cannot be reached, or refuses a request."""

    #: ``missing`` (no such object or bucket), ``denied``, ``changed`` (not the version asked
    #: for), ``too_large``, ``unreachable`` or ``failed``: the last two may pass if retried.
    def __init__(self, message: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.reason in ("unreachable", "failed")


class QueueError(LookalikeError):
    """A message queue (SQS, Kafka) cannot be reached, or refuses a request."""
