"""The shard file: one Parquet file per shard of a `lookalike embed` backfill, and where it lives.

One row per image file of the shard: ``uri``, ``content_hash``, ``size``, ``mtime_ns``, ``etag``,
``width``, ``height``, ``vector`` (fixed-size list of float32, null for a failure) and ``error``
(null for a success). The file's key-value metadata (``lookalike.*``) says which model made the
vectors (its name, dimension and fingerprint), the shard (``I/N``), the lookalike version and when.

A shard file is written to a hidden temporary file (``.NAME.<random>.tmp`` beside it, or in the
system's temporary folder for ``s3://``) and becomes visible only when complete: renamed into
place after an fsync, or uploaded to S3 in one PUT (or one completed multipart upload). So a
shard killed midway leaves no file with the shard's name; the next run of that shard starts over
and removes the temporary files an earlier run of it left beside the target.

URIs and messages are stored as the metadata store keeps them (:func:`stored_uri`): a file name
that is not valid UTF-8 survives the round trip through Parquet's UTF-8 strings.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.metadata
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import objects
from ..errors import DiskWriteError, MissingDependencyError, ObjectStoreError, UsageError
from ..storage.records import stored_uri

FORMAT = 1
_PREFIX = "lookalike."
_INSTALL = "pip install 'lookalike[parquet]'"
#: Rows per Parquet row group: a few MB of vectors, read back one group at a time.
ROW_GROUP = 1024


def require_pyarrow(module: str = "pyarrow.parquet") -> Any:
    """The ``pyarrow.parquet`` module (or another of pyarrow), or MissingDependencyError saying
    how to install it. Imported by name: pyarrow ships no type information."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError("pyarrow", "Shard files (embed, import)", _INSTALL) from None


@dataclass(frozen=True)
class ShardHeader:
    """What a shard file says about itself; ``source`` is where it was read from (a path or an
    ``s3://`` URI, for messages), ``path`` the local file to read."""

    source: str
    path: str
    model: str
    dim: int
    fingerprint: str
    weights: str | None
    shard: str
    created: str
    version: str
    rows: int


def schema(dim: int, metadata: dict[str, Any]) -> Any:
    """The Parquet schema of a shard file of ``dim``-d vectors, with ``metadata`` (each value
    JSON-encoded unless a string) under ``lookalike.*`` keys."""
    pa = require_pyarrow("pyarrow")
    fields = [("uri", pa.string()), ("content_hash", pa.string()), ("size", pa.int64()),
              ("mtime_ns", pa.int64()), ("etag", pa.string()), ("width", pa.int32()),
              ("height", pa.int32()), ("vector", pa.list_(pa.float32(), dim)),
              ("error", pa.string())]
    meta = {"format": str(FORMAT), "version": importlib.metadata.version("lookalike"),
            **metadata}
    return pa.schema(fields, metadata={
        _PREFIX + key: value if isinstance(value, str) else json.dumps(value)
        for key, value in meta.items()})


def read_header(source: str, path: str) -> ShardHeader:
    """The header of the shard file at ``path``; UsageError for a file that is not one."""
    pq = require_pyarrow()
    try:
        meta = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise UsageError(f"{source} is not a Parquet file ({exc}); import the files "
                         "`lookalike embed` wrote.") from None
    found = {k.decode(): v.decode() for k, v in (meta.schema_arrow.metadata or {}).items()}
    info = {k[len(_PREFIX):]: v for k, v in found.items() if k.startswith(_PREFIX)}
    if "fingerprint" not in info:
        raise UsageError(f"{source} is not a shard file of `lookalike embed` (its metadata has "
                         "no lookalike.fingerprint).")
    if info.get("format") != str(FORMAT):
        raise UsageError(f"{source} is in shard format {info.get('format')}, this lookalike "
                         f"reads format {FORMAT}: import it with the lookalike that wrote it "
                         f"({info.get('version')}), or embed the shard again.")
    vector = meta.schema_arrow.field("vector").type
    try:
        dim = int(info["dim"])
        weights = json.loads(info.get("weights", "null"))
        header = ShardHeader(source, path, info["model"], dim, info["fingerprint"], weights,
                             info["shard"], info["created"], info["version"],
                             meta.metadata.num_rows)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"{source} is damaged: its lookalike metadata is incomplete ({exc}); "
                         "embed the shard again.") from None
    if getattr(vector, "list_size", None) != dim or str(vector.value_type) != "float":
        raise UsageError(f"{source} is damaged: its vectors are {vector}, not {dim} float32 "
                         "numbers; embed the shard again.")
    return header


def record_batches(header: ShardHeader, **options: Any) -> Iterator[Any]:
    """The shard file's rows, in record batches (``iter_batches`` options); UsageError for a
    file that turns out damaged."""
    pq = require_pyarrow()
    try:
        yield from pq.ParquetFile(header.path,
                                  page_checksum_verification=True).iter_batches(**options)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowIOError, ArrowInvalid
        reason = " ".join(str(exc).split())
        raise UsageError(f"{header.source} is damaged ({reason}); embed the shard again.") from None


class ShardWriter:
    """Rows into the shard's temporary file, a row group at a time (see :func:`written`)."""

    def __init__(self, tmp: str, dim: int, metadata: dict[str, Any]) -> None:
        pq = require_pyarrow()
        self.tmp, self.dim = tmp, dim
        self._columns: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        self._vectors: list[np.ndarray] = []
        self._writer = pq.ParquetWriter(tmp, schema(dim, metadata), compression="zstd",
                                        use_dictionary=False, write_page_checksum=True)

    def add(self, uri: str, facts: tuple[int, int, str | None], content_hash: str | None,
            size: tuple[int, int], vector: np.ndarray | None, error: str | None) -> None:
        """One image: ``facts`` (size, mtime_ns, etag) as listed, the pixel ``size`` (width,
        height; zeros for a failure), and its vector or why it failed."""
        row = (stored_uri(uri), content_hash or None, *facts, size[0] or None, size[1] or None,
               None if error is None else stored_uri(error))
        for name, value in zip(_COLUMNS, row, strict=True):
            self._columns[name].append(value)
        self._vectors.append(np.zeros(self.dim, np.float32) if vector is None else vector)
        if len(self._vectors) >= ROW_GROUP:
            with _disk(self.tmp):
                self.flush()

    def flush(self) -> None:
        if not self._vectors:
            return
        pa = require_pyarrow("pyarrow")
        failed = np.array([e is not None for e in self._columns["error"]])
        flat = pa.array(np.stack(self._vectors).astype(np.float32).ravel())
        vectors = pa.FixedSizeListArray.from_arrays(flat, self.dim, mask=pa.array(failed))
        self._writer.write_table(pa.table({**self._columns, "vector": vectors},
                                          schema=self._writer.schema))
        self._columns = {name: [] for name in _COLUMNS}
        self._vectors = []

    def close(self) -> None:
        self.flush()
        self._writer.close()


_COLUMNS = ("uri", "content_hash", "size", "mtime_ns", "etag", "width", "height", "error")


def target_of(out: str, name: str) -> str:
    """Where the shard file ``name`` goes in ``out``, a folder or an ``s3://`` prefix."""
    if objects.is_object_uri(out):
        where = objects.ObjectURI.parse(out)
        prefix = where.key if where.is_prefix else where.key + "/"
        return f"{objects.SCHEME}{where.bucket}/{prefix}{name}"
    return str(Path(out).expanduser().absolute() / name)


@contextlib.contextmanager
def written(target: str, dim: int, metadata: dict[str, Any]) -> Iterator[ShardWriter]:
    """A writer for the shard file ``target`` (a path or an ``s3://`` URI): the file appears
    complete when the block ends, and not at all when it raises (or the process dies)."""
    if objects.is_object_uri(target):
        handle, tmp = tempfile.mkstemp(prefix=".lookalike-shard-", suffix=".tmp")
        os.close(handle)
    else:
        folder, name = os.path.split(target)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"Cannot make the output folder {folder}: {exc.strerror}.") from None
        for stale in Path(folder).glob(f".{name}.*.tmp"):  # left by a killed run of this shard
            stale.unlink(missing_ok=True)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with _disk(target):
            writer = ShardWriter(tmp, dim, metadata)
        yield writer
        with _disk(target):
            writer.close()
            _put(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _disk(target: str) -> Iterator[None]:
    """A full or failing disk (OSError from the writer or the rename) as DiskWriteError."""
    try:
        yield
    except (PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        raise UsageError(f"Cannot write the shard file {target}: {exc.strerror}. Give an --out "
                         "folder (or s3:// prefix) this job can write to.") from None
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise UsageError(f"Cannot write the shard file {target}: the file system is "
                             "read-only. Give an --out folder this job can write to.") from None
        raise DiskWriteError.writing(target, exc) from None


def _put(tmp: str, target: str) -> None:
    if not objects.is_object_uri(target):
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # atomic: the name appears with the whole file behind it
        with contextlib.suppress(OSError):  # make the rename itself durable, where possible
            folder = os.open(os.path.dirname(target), os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        return
    where = objects.ObjectURI.parse(target)
    client = objects.client()  # MissingDependencyError without boto3
    import boto3

    try:
        with objects.translated(target):
            client.upload_file(tmp, where.bucket, where.key)
    except boto3.exceptions.S3UploadFailedError as exc:
        raise ObjectStoreError(f"{target}: the upload failed ({exc}); run the shard again",
                               "failed") from None


def located(sources: Sequence[str | os.PathLike[str]], tmp: str) -> Iterator[tuple[str, str]]:
    """(source, local path) of every shard file ``sources`` name: files, the ``*.parquet``
    files of folders, objects and the ``.parquet`` objects under ``s3://`` prefixes (downloaded
    into ``tmp``); hidden names are left out, as temporary files are hidden."""
    for raw in sources:
        if objects.is_object_uri(raw):
            uris = _object_shards(str(raw))
            for uri in uris:
                path = os.path.join(tmp, f"{uuid.uuid4().hex}.parquet")
                where = objects.ObjectURI.parse(uri)
                with objects.translated(uri):
                    objects.client().download_file(where.bucket, where.key, path)
                yield uri, path
            continue
        path = os.path.abspath(os.fspath(raw))
        if os.path.isdir(path):
            found = sorted(str(p) for p in Path(path).glob("*.parquet")
                           if not p.name.startswith(".") and p.is_file())
            if not found:
                raise UsageError(f"There are no shard files (*.parquet) in {path}: write them "
                                 f"with `lookalike embed ... --out {path}`.")
            yield from ((p, p) for p in found)
        elif os.path.isfile(path):
            yield path, path
        else:
            raise UsageError(f"Path {path} does not exist.")


def _object_shards(uri: str) -> list[str]:
    where = objects.ObjectURI.parse(uri)
    if not where.is_prefix:
        return [uri]
    found = []
    with objects.translated(uri):
        pages = objects.client().get_paginator("list_objects_v2").paginate(
            Bucket=where.bucket, Prefix=where.key)
        for page in pages:
            for item in page.get("Contents", ()):
                key = item["Key"]
                hidden = any(p.startswith(".") for p in key[len(where.key):].split("/"))
                if key.lower().endswith(".parquet") and not hidden:
                    found.append(f"{objects.SCHEME}{where.bucket}/{key}")
    if not found:
        raise UsageError(f"There are no shard files (.parquet objects) under {uri}: write "
                         f"them with `lookalike embed ... --out {uri}`.")
    return sorted(found)
