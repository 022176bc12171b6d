"""Import: shard files of `lookalike embed` into a collection, through the indexing path.

``lookalike import`` runs the same :class:`~lookalike.ingest.Ingestor` as `index`, listing the
shard files' rows instead of walking folders and reading their vectors (:class:`ShardSource`)
instead of decoding: an image stored with the same size and modification time (objects: size and
ETag) is skipped, one with the content hash of a stored vector reuses it, and each batch is one
store transaction followed by the live index. So importing twice adds nothing, and an interrupted
import carries on when run again. Nothing is removed: images missing from the shards stay.
Every file's model fingerprint is checked against the collection's before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import numpy as np

from ..embedders import embedding_fingerprint, get_model_spec
from ..errors import ModelMismatchError, UsageError
from ..imaging import Decoded
from ..storage.records import loaded_uri
from ..types import shown_uri
from .local import Batch, FileEntry
from .shard_files import ShardHeader, located, read_header, record_batches, require_pyarrow


class ShardSet:
    """Shard files opened for import (see :func:`open_shards`): what each says about itself."""

    def __init__(self, headers: list[ShardHeader]) -> None:
        self.headers = headers

    def __iter__(self) -> Iterator[str]:
        """Where the files were read from: a ShardSet passes for the sources that opened it."""
        return iter([h.source for h in self.headers])

    @property
    def model(self) -> str:
        """The model every file was embedded with (ModelMismatchError if they differ)."""
        first = self.headers[0]
        for other in self.headers[1:]:
            if other.fingerprint != first.fingerprint:
                raise ModelMismatchError(
                    f"{other.source} was embedded with {other.model} as {other.fingerprint}, "
                    f"but {first.source} with {first.model} as {first.fingerprint}: import them "
                    "into different collections, or embed one of them again.")
        return first.model

    def check(self, fingerprint: str | None, dim: int, collection: str | os.PathLike[str]) -> None:
        """ModelMismatchError naming both fingerprints unless every file's vectors were made by
        the model with ``fingerprint`` (a collection's)."""
        for header in self.headers:
            if header.fingerprint != fingerprint or header.dim != dim:
                raise ModelMismatchError(
                    f"{header.source} was embedded with {header.model} as {header.fingerprint}, "
                    f"but the collection {collection} was built with {fingerprint}: the vectors "
                    "would not be comparable. Import it into a new --collection (made with its "
                    "model), or embed the shard again with the collection's --model.")

    def check_new(self, weights: str | None, collection: str | os.PathLike[str]) -> None:
        """:meth:`check` against a new collection of the files' model with ``weights``."""
        spec = get_model_spec(self.model)
        self.check(embedding_fingerprint(spec, weights), spec.dim, collection)

    def missing(self) -> dict[int, list[int]]:
        """The shards absent from the set, by number of shards, for every number of shards one
        of its files belongs to."""
        found: dict[int, set[int]] = {}
        for header in self.headers:
            index, _, count = header.shard.partition("/")
            if index.isdigit() and count.isdigit():
                found.setdefault(int(count), set()).add(int(index))
        return {n: absent for n, have in sorted(found.items())
                if (absent := [i for i in range(n) if i not in have])}

    def source(self, batch_size: int) -> ShardSource:
        """The files' rows, as a listing and a batch source for the Ingestor."""
        return ShardSource(self.headers, batch_size)


@contextlib.contextmanager
def open_shards(sources: Iterable[str | os.PathLike[str]]) -> Iterator[ShardSet]:
    """The shard files ``sources`` name (files, folders of ``*.parquet``, ``s3://`` objects and
    prefixes); those in S3 are downloaded to a temporary folder, removed at the end."""
    require_pyarrow()
    with tempfile.TemporaryDirectory(prefix="lookalike-shards-") as tmp:
        yield ShardSet([read_header(source, path) for source, path in located(list(sources), tmp)])


def opened(shards: ShardSet | Iterable[str | os.PathLike[str]]
           ) -> contextlib.AbstractContextManager[ShardSet]:
    """``shards`` if already open, else :func:`open_shards` of them."""
    if isinstance(shards, ShardSet):
        return contextlib.nullcontext(shards)
    return open_shards(shards)


class ShardSource:
    """Reads the shard files' rows: :attr:`files` lists each image as it was embedded (the
    last file wins where two hold one URI); :meth:`batches` yields their vectors."""

    def __init__(self, headers: list[ShardHeader], batch_size: int) -> None:
        self._headers = headers
        self.batch_size = max(1, batch_size)
        listed: dict[str, FileEntry] = {}
        self._file_of: dict[str, int] = {}
        for number, header in enumerate(headers):
            columns = ["uri", "size", "mtime_ns", "etag"]
            for rows in record_batches(header, columns=columns):
                for uri, size, mtime_ns, etag in zip(*(rows.column(c).to_pylist()
                                                       for c in columns), strict=True):
                    uri = loaded_uri(uri)
                    listed[uri] = FileEntry(uri, size, mtime_ns, etag)
                    self._file_of[uri] = number
        self.files = list(listed.values())

    def batches(self, uris: list[str], stages: dict[str, float]) -> Generator[Batch, None, None]:
        todo = set(uris)
        stages.setdefault("read", 0.0)
        for number, header in enumerate(self._headers):
            if not todo:
                return
            start = time.perf_counter()
            for rows in record_batches(header, batch_size=self.batch_size):
                batch = self._rows(number, header, rows, todo)
                stages["read"] += time.perf_counter() - start
                if batch[0]:
                    yield batch
                start = time.perf_counter()

    def _rows(self, number: int, header: ShardHeader, rows: Any, todo: set[str]) -> Batch:
        vectors = rows.column("vector")
        flat = vectors.flatten().to_numpy(zero_copy_only=False).reshape(-1, header.dim)
        valid = ~vectors.is_null().to_numpy(zero_copy_only=False)
        position = np.cumsum(valid) - 1  # row -> its vector in ``flat``, where it has one
        columns = {name: rows.column(name).to_pylist()
                   for name in ("uri", "content_hash", "width", "height", "error")}
        decoded, found = [], {}
        for i, raw in enumerate(columns["uri"]):
            uri = loaded_uri(raw)
            if uri not in todo or self._file_of[uri] != number:
                continue
            todo.discard(uri)
            error = columns["error"][i]
            # Shards hold no file fields (format, EXIF): the store derives format from the name.
            decoded.append(Decoded(uri, None, columns["width"][i] or 0,
                                   columns["height"][i] or 0, columns["content_hash"][i] or "",
                                   None if error is None else loaded_uri(error)))
            if error is not None:
                continue
            if not valid[i] or not _unit(flat[position[i]]):
                raise UsageError(f"{header.source} is damaged: the row of {shown_uri(uri)} has "
                                 "no usable vector (every vector is finite and of length 1) and "
                                 "no error; embed the shard again, then import it again.")
            found[uri] = flat[position[i]]
        return decoded, found


def _unit(vector: np.ndarray) -> bool:
    """Whether ``vector`` is what a model writes: finite, of length 1 (float32 rounding aside)."""
    with np.errstate(all="ignore"):
        return bool(np.isfinite(vector).all() and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3)
