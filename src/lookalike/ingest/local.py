"""Backfill: list -> decode (worker processes, bounded prefetch) -> embed (batches) -> write.

Every batch is committed to the store as one transaction, so an interrupted run loses at most the
batch in flight and the next run carries on from there. A bad file becomes a ``failed`` row with its
reason; it never stops the run. An object store that cannot be reached does stop it (an
ObjectStoreError, raised before that batch is written: no image is recorded as failed for it),
and a rerun carries on. Decoding (and embedding) can come from elsewhere: a :class:`BatchSource`
such as ``ingest.ray.RaySource`` replaces the local decoding workers, and everything else
(listing, skipping, reuse by content hash, writing) stays the same.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .. import objects
from ..embedders import Embedder
from ..imaging import IMAGE_EXTENSIONS, MAX_FILE_BYTES, Decoded, Edit, decode_file
from ..storage import ImageRecord, NewImage, Store
from ..types import FailedFile, IngestReport, Preprocess

#: A batch of decoded files, and the vectors of those already embedded where they were decoded.
Batch = tuple[list[Decoded], dict[str, np.ndarray]]


class BatchSource(Protocol):
    """Decodes (and may embed) the files to index, somewhere other than this process."""

    def batches(self, uris: list[str], stages: dict[str, float]) -> Generator[Batch, None, None]:
        """Batches covering ``uris`` once each, in any order; adds seconds to ``stages``. A
        caller that stops early closes the generator."""
        ...


@dataclass(frozen=True)
class FileEntry:
    """A file, or an object (which also has an ETag), as listed: what says whether it changed."""

    uri: str
    size: int
    mtime_ns: int
    etag: str | None = None

    def unchanged(self, record: ImageRecord) -> bool:
        """Whether ``record`` stored this version: same size and ETag for an object (its time is
        when it was written, kept for display), same size and modification time for a file."""
        if self.etag is not None:
            return record.size == self.size and record.etag == self.etag
        return record.size == self.size and record.mtime_ns == self.mtime_ns


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names something to index: a file or folder, an object, or a prefix with
    any object under it (see :func:`lookalike.objects.exists`)."""
    if objects.is_object_uri(path):
        return objects.exists(str(path))
    return os.path.exists(path)


def walk(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[FileEntry], list[str], list[str]]:
    """Image files under ``paths`` (recursive, symlinks followed, loops skipped), and image
    objects under ``s3://`` prefixes.

    Returns the files sorted by uri, the absolute paths (and URIs) that were listed, and those
    that do not exist. Hidden files and folders are skipped.
    """
    files: dict[str, FileEntry] = {}
    roots: list[str] = []
    missing: list[str] = []
    for raw in paths:
        if objects.is_object_uri(raw):
            uri = str(raw)
            if not exists(uri):
                missing.append(uri)
                continue
            roots.append(uri)
            for item in objects.listing(uri):
                files[item.uri] = FileEntry(item.uri, item.size, item.mtime_ns, item.etag)
            continue
        root = os.path.abspath(os.fspath(raw))
        try:
            st = os.stat(root)
        except FileNotFoundError:
            missing.append(root)
            continue
        roots.append(root)
        if stat.S_ISDIR(st.st_mode):
            for entry in _walk_dir(root):
                files[entry.uri] = entry
        else:  # a file named explicitly is indexed whatever its extension
            files[root] = FileEntry(root, st.st_size, st.st_mtime_ns)
    return sorted(files.values(), key=lambda e: e.uri), roots, missing


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_dir(root: str) -> Iterator[FileEntry]:
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop or a second link to a folder
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not _is_image_name(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                fst = os.stat(path)
            except OSError:  # a dangling symlink
                continue
            if stat.S_ISREG(fst.st_mode):
                yield FileEntry(path, fst.st_size, fst.st_mtime_ns)


def _under(uri: str, roots: Sequence[str]) -> bool:
    return any(uri == r or (_is_folder(r) and uri.startswith(r.rstrip(os.sep) + os.sep))
               for r in roots)


def _is_folder(root: str) -> bool:
    # An object's key can also be a prefix of others; naming the object names only it.
    return not objects.is_object_uri(root) or objects.ObjectURI.parse(root).is_prefix


def _init_worker() -> None:
    # Ctrl-C is handled once, by the main process, which then stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # If the main process is killed (kill -9), its workers must not linger: on Linux, ask the
    # kernel to kill this worker when its parent dies.
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def decode_pool(workers: int) -> ProcessPoolExecutor:
    """Processes to decode in, beside a model running in this one. spawn: they start clean (no
    inherited runtime threads or locks), as children of this process, so they die with it."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker)


def _decode_chunk(uris: list[str], preprocess: Preprocess, max_pixels: int,
                  max_bytes: int, edit: Edit | None = None) -> tuple[list, float]:
    start = time.perf_counter()
    decoded = [decode_file(u, preprocess, max_pixels, max_bytes, edit) for u in uris]
    return decoded, time.perf_counter() - start


def decoded_chunks(chunks: list[list[str]], preprocess: Preprocess, max_pixels: int,
                   max_bytes: int, workers: int, stages: dict[str, float],
                   edit: Edit | None = None) -> Generator[list[Decoded], None, None]:
    """Each chunk of files decoded, in order: by ``workers`` processes, a few chunks per worker
    ahead of the caller (bounded prefetch), or here with 0. Adds the seconds spent decoding and
    waiting for it to ``stages``. ``edit`` (a picklable function): see
    :func:`~lookalike.imaging.decode_file`."""
    if workers == 0 or len(chunks) <= 1:
        for chunk in chunks:
            decoded, seconds = _decode_chunk(chunk, preprocess, max_pixels, max_bytes, edit)
            stages["decode"] += seconds
            stages["decode_wait"] += seconds
            yield decoded
        return
    pending: deque[Future] = deque()
    with decode_pool(workers) as pool:
        try:
            queue = iter(chunks)
            while True:
                while len(pending) <= 2 * workers and (ahead := next(queue, None)) is not None:
                    pending.append(pool.submit(_decode_chunk, ahead, preprocess, max_pixels,
                                               max_bytes, edit))
                if not pending:
                    return
                wait_start = time.perf_counter()
                decoded, seconds = pending.popleft().result()
                stages["decode_wait"] += time.perf_counter() - wait_start
                stages["decode"] += seconds
                yield decoded
        finally:
            for future in pending:
                future.cancel()


@dataclass
class _Tally:
    added: int = 0
    updated: int = 0
    reused: int = 0
    failed: list[FailedFile] = field(default_factory=list)
    stages: dict[str, float] = field(
        default_factory=lambda: {"walk": 0.0, "decode": 0.0, "decode_wait": 0.0, "embed": 0.0,
                                 "write": 0.0}
    )


class Ingestor:
    """Brings a store and its index in step with folders of images."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        committed: Callable[[], None],
        *,
        max_pixels: int,
        max_bytes: int = MAX_FILE_BYTES,
        batch_size: int = 32,
        workers: int = 1,
        checkpoint: Callable[[], None] | None = None,
        checkpoint_seconds: float = 60.0,
        source: BatchSource | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self._committed = committed  # the index catches up with what was just committed
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.batch_size = max(1, batch_size)
        self.workers = max(0, workers)
        self._checkpoint = checkpoint
        self._checkpoint_seconds = checkpoint_seconds
        self._source = source

    def run(
        self, paths: Iterable[str | os.PathLike[str]], *, remove_missing: bool = True,
        show_progress: bool | None = None,
    ) -> IngestReport:
        """Index ``paths``. With ``remove_missing``, indexed files under them that no longer
        exist (including paths that are gone altogether) are removed."""
        started = time.perf_counter()
        files, roots, missing = walk(paths)
        return self.run_listed(files, sweep=roots + missing if remove_missing else (),
                               show_progress=show_progress, started=started)

    def run_listed(
        self, files: Sequence[FileEntry], *, sweep: Sequence[str] = (),
        show_progress: bool | None = None, started: float | None = None,
    ) -> IngestReport:
        """Index ``files`` as the caller listed them (a shard file of `lookalike embed` lists
        each image as it was when it was embedded). Indexed files under the ``sweep`` roots that
        are not among ``files`` are removed. ``started``: when the listing began (the report's
        clock), default now."""
        started = time.perf_counter() if started is None else started
        tally = _Tally()
        known = self.store.file_states()
        todo: list[FileEntry] = []
        unchanged = 0
        for entry in files:
            record = known.get(entry.uri)
            if record and entry.unchanged(record):
                unchanged += 1
            else:
                todo.append(entry)
        present = {e.uri for e in files}
        gone = [r.id for uri, r in known.items()
                if sweep and uri not in present and _under(uri, sweep)]
        tally.stages["walk"] = time.perf_counter() - started

        self._process(todo, known, tally, show_progress)
        removed = self.store.mark_removed(gone) if gone else 0
        if gone:
            self._committed()
        return IngestReport(
            added=tally.added, updated=tally.updated, unchanged=unchanged, reused=tally.reused,
            removed=removed, failed=tuple(tally.failed),
            seconds=time.perf_counter() - started,
            stage_seconds={k: round(v, 3) for k, v in tally.stages.items()},
        )

    def _process(self, todo: list[FileEntry], known: dict, tally: _Tally,
                 show_progress: bool | None) -> None:
        from tqdm import tqdm

        by_uri = {e.uri: e for e in todo}
        uris = [e.uri for e in todo]
        disable = None if show_progress is None else not show_progress
        last_checkpoint = time.monotonic()
        if self._source is not None:
            batches = self._source.batches(uris, tally.stages)
        else:
            batches = ((decoded, {}) for decoded in self._decoded_batches(uris, tally))
        with tqdm(total=len(todo), unit="img", desc="indexing", disable=disable,
                  file=sys.stderr, smoothing=0.1) as bar, contextlib.closing(batches):
            for decoded, embedded in batches:
                self._write_batch(decoded, embedded, by_uri, known, tally)
                bar.update(len(decoded))
                now = time.monotonic()
                if self._checkpoint and now - last_checkpoint > self._checkpoint_seconds:
                    self._checkpoint()
                    last_checkpoint = now

    def _decoded_batches(self, uris: list[str], tally: _Tally) -> Iterator[list[Decoded]]:
        chunks = [uris[i:i + self.batch_size] for i in range(0, len(uris), self.batch_size)]
        return decoded_chunks(chunks, self.embedder.preprocess, self.max_pixels, self.max_bytes,
                              self.workers, tally.stages)

    def _write_batch(self, decoded: list[Decoded], embedded: dict[str, np.ndarray],
                     by_uri: dict[str, FileEntry], known: dict, tally: _Tally) -> None:
        start = time.perf_counter()
        vectors: dict[str, np.ndarray] = {}
        to_embed: list[Decoded] = []
        for item in decoded:
            if item.error:
                continue
            reused = self.store.vector_by_hash(item.content_hash) if item.content_hash else None
            if reused is not None:
                vectors[item.uri] = reused
                tally.reused += 1
            elif item.uri in embedded:
                vectors[item.uri] = embedded[item.uri]
            else:
                to_embed.append(item)
        if to_embed:
            # Decoded here without an error, so each has pixels (zip's strict check says if not).
            pixels = [d.pixels for d in to_embed if d.pixels is not None]
            fresh = self.embedder.embed_pixels(np.stack(pixels))
            vectors.update(zip((d.uri for d in to_embed), fresh, strict=True))
        embed_done = time.perf_counter()
        tally.stages["embed"] += embed_done - start

        rows = []
        for item in decoded:
            entry = by_uri[item.uri]
            rows.append(NewImage(
                uri=item.uri, size=entry.size, mtime_ns=entry.mtime_ns,
                content_hash=item.content_hash or None, width=item.width or None,
                height=item.height or None, vector=vectors.get(item.uri), error=item.error,
                etag=entry.etag, file_fields=item.fields,
            ))
            if item.error:
                tally.failed.append(FailedFile(item.uri, item.error))
            elif item.uri in known:
                tally.updated += 1
            else:
                tally.added += 1
        self.store.write(rows)
        self._committed()
        tally.stages["write"] += time.perf_counter() - embed_done
