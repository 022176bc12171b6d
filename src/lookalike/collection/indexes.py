"""A collection's index, owned by :class:`lookalike.Collection`: the live index kept in step with
the manifest (its spec and projection, which other processes may change), the writer and
compaction locks, and the jobs that rebuild it: compaction, rebuild, PCA reduction, switching
the index spec, and checking it against the store."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np

from .. import settings
from ..errors import (
    CollectionLockedError,
    CorruptCollectionError,
    ReadOnlyCollectionError,
    UsageError,
)
from ..index import PCA, IndexSpec, Projection, load_projection, parse_spec
from ..live import (
    DELTA_INDEX,
    MAIN_INDEX,
    CompactionPolicy,
    CompactionReport,
    LiveIndex,
    VerifyReport,
    claim_index,
    file_stamp,
    open_live,
    remove_stale_temporaries,
    verify_index,
)
from ..storage import Store
from ..types import ReduceReport
from .files import remove_quietly, write_durably
from .manifest import MANIFEST, Manifest, PcaEntry, load_manifest, now, write_manifest

LOCK, COMPACT_LOCK = ".lock", ".compact.lock"
P = TypeVar("P", bound=Projection | None)
#: Present while `reduce` or `learn` switches projections: the index files may belong to
#: either one.
REDUCING = ".reduce-pending"


@dataclasses.dataclass(frozen=True)
class ProjectionSwitch:
    """What :meth:`Indexes.switch_projection` did to the index."""

    dim_before: int
    dim_after: int
    bytes_before: int
    bytes_after: int
    vectors: int
    fit_seconds: float
    build_seconds: float


class Indexes:
    """The live index of the collection in ``path`` and the jobs that maintain it."""

    def __init__(self, path: Path, manifest: Manifest, store: Store) -> None:
        self.path = path
        self.manifest = manifest
        self.store = store
        self._live: LiveIndex | None = None
        self._live_pca: str | None = None  # the PCA file self._live projects with
        self._live_lock = threading.Lock()  # one thread (re)loads the indexes at a time
        self._manifest_stamp: tuple[int, int, int] | None = None  # re-read on first use
        self._write_lock = threading.Lock()  # threads of this process take turns as the writer
        self._in_background = False

    def close(self) -> None:
        if self._live is not None:
            self._live.close()

    @property
    def spec(self) -> IndexSpec:
        return self.manifest.spec

    # -- the live index, kept in step with the manifest ---------------------------------------

    @property
    def live(self) -> LiveIndex:
        """The live index, in step with the store and with the manifest's projection: after a
        `reduce` in any process it is reloaded on next use."""
        self._sync_manifest()
        live = self._live
        if live is not None and (self._is_current(live) or self._reducing()):
            return live  # while a reduce runs, the old indexes stay right for their projection
        # Another thread may be loading the new indexes: search with the old ones meanwhile.
        if live is not None and not self._live_lock.acquire(blocking=False):
            return live
        if live is None:
            self._live_lock.acquire()
        try:
            if self._live is live or self._live is None:
                self._replace_live()
            assert self._live is not None  # set by _replace_live
            return self._live
        finally:
            self._live_lock.release()

    def reload_in_background(self) -> None:
        """Leave new main index files to :meth:`upkeep` (a server's upkeep thread)."""
        self._in_background = True
        if self._live is not None:
            self._live.reload_in_background = True

    def _is_current(self, live: LiveIndex) -> bool:
        """Whether ``live`` has the manifest's projection and index spec."""
        return self._live_pca == self._pca_file() and live.spec == self.spec

    def _new_live(self, *, load: bool = True) -> tuple[LiveIndex, str | None]:
        """A live index with the manifest's projection, and its PCA file name."""
        name = self._pca_file()
        projection = load_projection(self.path / name) if name else None
        live = open_live(self.path, self.spec, self.manifest.model.dim, self.store,
                         self._policy(), load=load, projection=projection,
                         main_is_current=lambda: self._main_is_current(name),
                         milvus_token=settings.resolve("milvus_token"),
                         qdrant_api_key=settings.resolve("qdrant_api_key"))
        live.reload_in_background = self._in_background
        return live, name

    def _replace_live(self, *, load: bool = True) -> LiveIndex:
        # The caller holds _live_lock.
        live, name = self._new_live(load=load)
        self._live, self._live_pca = live, name
        return live

    def _sync_manifest(self) -> None:
        """Re-read the manifest if another process replaced it (one stat when it did not)."""
        stamp = file_stamp(self.path / MANIFEST)
        if stamp != self._manifest_stamp:
            self.manifest = load_manifest(self.path)
            self._manifest_stamp = stamp

    def touch(self) -> None:
        """Record in the manifest that the collection changed now."""
        self._save_manifest(self.manifest)

    def _save_manifest(self, manifest: Manifest) -> None:
        self.manifest = manifest.replace(updated=now())
        write_manifest(self.path, self.manifest)

    def _pca_file(self) -> str | None:
        return self.manifest.pca.file if self.manifest.pca else None

    def _reducing(self) -> bool:
        return (self.path / REDUCING).exists()

    def _main_is_current(self, pca_file: str | None) -> bool:
        # Whether main.index on disk was built with this projection: no reduce under way and
        # none finished since (a new reduce always writes a new PCA file name).
        self._sync_manifest()
        return not self._reducing() and self._pca_file() == pca_file

    @property
    def index_dim(self) -> int:
        self._sync_manifest()
        return self.manifest.index_dim

    @staticmethod
    def _policy() -> CompactionPolicy:
        return CompactionPolicy(
            delta_min=settings.resolve("compact_min_delta"),
            delta_fraction=settings.resolve("compact_delta_fraction"),
            tombstone_fraction=settings.resolve("compact_tombstone_fraction"),
        )

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the writer lock, waiting up to ``wait`` seconds for a writer in another process
        to finish, then :class:`CollectionLockedError`. Threads of this process take turns.
        After committing to the store, a writer calls :meth:`committed`."""
        if not self._write_lock.acquire(timeout=max(wait, 60.0)):
            raise CollectionLockedError(f"{self.path} is being written by another thread.")
        try:
            with file_lock(self.path / LOCK, "being written by another process", wait):
                remove_stale_temporaries(self.path)
                # No reduce runs while we hold the lock: write with the manifest's projection.
                self._sync_manifest()
                yield
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def image_writer(self, wait: float = 0.0) -> Iterator[None]:
        """:meth:`writer`, with the live index open before anything is written: an embedded
        engine another process holds (Qdrant Edge, Milvus Lite) refuses the write up front,
        rather than after the store has taken it."""
        with self.writer(wait):
            self.live  # noqa: B018 - opening it is the point
            yield

    def committed(self) -> None:
        """Make what was just committed to the store searchable here: the same catch-up every
        other process does (see :mod:`lookalike.live.contract`)."""
        self.live.refresh()

    def upkeep(self) -> bool:
        """A server's periodic care: load a main index swapped in elsewhere, catch up, and say
        whether a compaction is due."""
        live = self.live
        live.reload_main()
        live.refresh(reload_main=False)
        return live.needs_compaction()

    def save_delta(self, wait: float = 0.0) -> bool:
        """Cache the delta for the next process; False if another writer holds the lock, or the
        collection is read-only (the next process then catches up from the store)."""
        try:
            with self.writer(wait):
                self.live.save_delta()
            return True
        except (CollectionLockedError, ReadOnlyCollectionError):
            return False

    # -- maintenance ------------------------------------------------------------------------

    def compact(self, *, wait: bool = True) -> CompactionReport | None:
        """Build a new main index from the stored vectors and swap it in (searches and writers
        carry on meanwhile). With ``wait=False``, returns None if a compaction is running."""
        try:
            with file_lock(self.path / COMPACT_LOCK, "being compacted by another process"):
                self._sync_manifest()
                live, pca_file = self._live, self._live_pca
                if live is None or pca_file != self._pca_file():
                    # Nothing searches here yet, or with another projection (an interrupted
                    # reduce): build new indexes without loading the old ones, then use them.
                    live, pca_file = self._new_live(load=False)
                    report = live.compact()
                    with self._live_lock:
                        self._live, self._live_pca = live, pca_file
                else:
                    report = live.compact()
                self._finish_interrupted_reduce(pca_file)
                return report
        except CollectionLockedError:
            if wait:
                raise
            return None

    def rebuild(self) -> CompactionReport:
        """Rebuild every index from the stored vectors, ignoring (then replacing) the index files:
        the repair for anything `verify` reports that the store can restore. Refuses when the
        store itself is damaged."""
        problems = self.store.integrity_problems()
        if problems:
            raise CorruptCollectionError(f"Not rebuilding: {problems[0]}.")
        with file_lock(self.path / COMPACT_LOCK, "being compacted by another process"):
            self._sync_manifest()
            with self._live_lock:
                live, pca_file = self._replace_live(load=False), self._live_pca
            report = live.compact()
            self._finish_interrupted_reduce(pca_file)
            return report

    def _finish_interrupted_reduce(self, pca_file: str | None) -> None:
        # The caller holds the compaction lock, which a running reduce holds throughout: a
        # marker left now is an interrupted reduce's, and the index files just built use the
        # manifest's projection, so readers may trust them again.
        self._sync_manifest()
        if self._pca_file() == pca_file:
            remove_quietly(self.path / REDUCING)

    def reduce(self, dim: int, *, whiten: bool = False, sample: int = 1_000_000, seed: int = 0,
               wait: float = 0.0) -> ReduceReport:
        """Project the index to ``dim`` dimensions with a PCA learnt from up to ``sample``
        stored vectors (drawn uniformly, seeded), and rebuild it; ``dim=0`` removes the PCA.
        See :meth:`lookalike.Collection.reduce`."""
        if dim < 0:
            raise UsageError(f"--dim must be a positive number of dimensions (or 0: off), "
                             f"got {dim}.")
        if sample < 1:
            raise UsageError(f"--sample must be at least 1, got {sample}.")

        def fit() -> tuple[PCA | None, PcaEntry | None]:
            if not dim:
                return None, None
            pca = PCA.fit(self.store.sample_vectors(sample, seed=seed), dim, whiten=whiten)
            return pca, PcaEntry(pca.dim, pca.whiten, "", pca.trained_on, seed,
                                 round(pca.explained_variance_ratio, 6))

        pca, switch = self.switch_projection(fit, wait=wait)
        return ReduceReport(
            dim_before=switch.dim_before, dim_after=switch.dim_after,
            whiten=bool(pca and pca.whiten),
            explained_variance=pca.explained_variance_ratio if pca else None,
            trained_on=pca.trained_on if pca else 0, index_bytes_before=switch.bytes_before,
            index_bytes_after=switch.bytes_after, vectors=switch.vectors,
            fit_seconds=switch.fit_seconds, build_seconds=switch.build_seconds,
        )

    def stop_learning(self, wait: float = 0.0) -> None:
        """Record in the manifest that index and compact must not learn by themselves."""
        with self.writer(wait):
            self._save_manifest(self.manifest.replace(learn=False))

    def switch_projection(self, fit: Callable[[], tuple[P, PcaEntry | None]], *,
                          wait: float = 0.0, learn: bool | None = None
                          ) -> tuple[P, ProjectionSwitch]:
        """Make the index hold what ``fit`` learns (a projection and its manifest entry, whose
        file name is filled in here; (None, None): no projection) and rebuild it, holding the
        writer and compaction locks. Readers in any process switch on their next search.
        ``learn``, when given, is recorded in the manifest (see :mod:`.learning`)."""
        with self.writer(wait), file_lock(self.path / COMPACT_LOCK,
                                           "being compacted by another process", wait):
            before = self._index_bytes()
            dim_before, started = self.index_dim, time.perf_counter()
            projection, entry = fit()
            fit_seconds = time.perf_counter() - started
            write_durably(self.path / REDUCING, b"")  # readers stop trusting the index files
            if projection is not None and entry is not None:
                # A new name every time: tells old readers apart.
                entry = dataclasses.replace(entry, file=f"pca-{secrets.token_hex(4)}.npz")
                projection.save(self.path / entry.file)
            learning = self.manifest.learn if learn is None else learn
            self._save_manifest(self.manifest.replace(pca=entry, learn=learning))
            remove_quietly(self.path / DELTA_INDEX)  # the old projection's: never load it again
            live, pca_file = self._new_live(load=False)  # this handle searches the old meanwhile
            report = live.compact()
            with self._live_lock:
                self._live, self._live_pca = live, pca_file
            remove_quietly(self.path / REDUCING)
            for stale in self.path.glob("pca-*.npz"):
                if stale.name != self._pca_file():
                    remove_quietly(stale)
        return projection, ProjectionSwitch(
            dim_before=dim_before, dim_after=live.dim, bytes_before=before,
            bytes_after=self._index_bytes(), vectors=report.main_vectors,
            fit_seconds=fit_seconds, build_seconds=report.seconds)

    def _index_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.path / MAIN_INDEX, self.path / DELTA_INDEX)
                   if f.is_file())

    def set_index(self, spec: str, *, search: dict[str, int] | None = None) -> CompactionReport:
        """Switch to another index spec (and default search knobs), recorded in the manifest,
        and rebuild the index with it."""
        parsed = parse_spec(spec)
        with self.writer():
            if parsed.database is not None and parsed.database != self.spec.database:
                claim_index(parsed, self.path, self.index_dim, settings.resolve("milvus_token"),
                            qdrant_api_key=settings.resolve("qdrant_api_key"))
            self._save_manifest(self.manifest.replace(index_spec=parsed.text,
                                                      search=dict(search or {})))
            return self.rebuild()

    def search_defaults(self) -> dict[str, int]:
        """The per-call search knobs recorded for this collection (by `lookalike bench --apply`)."""
        self._sync_manifest()
        return dict(self.manifest.search)

    def index_vectors(self) -> np.ndarray:
        """Every active image's vector as the index holds it, (n, dim) float32."""
        chunks = [vectors for _, vectors in self.live.vectors()]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.index_dim), np.float32)

    def verify(self) -> VerifyReport:
        """Check that the index agrees with the store and the store with itself; changes
        nothing."""
        self._sync_manifest()
        report = verify_index(self.path, self.spec, self.index_dim, self.store,
                              settings.resolve("milvus_token"),
                              qdrant_api_key=settings.resolve("qdrant_api_key"))
        problems = list(report.problems)
        pca_file = self._pca_file()
        if pca_file and not (self.path / pca_file).is_file():
            problems.append(f"the PCA file {pca_file} is missing; run `lookalike reduce` again")
        if self._reducing():
            problems.append("a `lookalike reduce` is under way or was interrupted: the index "
                            "files may not match the PCA")
        return dataclasses.replace(report, problems=tuple(problems))


@contextlib.contextmanager
def file_lock(path: Path, doing: str, wait: float = 0.0) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait, poll_interval=0.02)
    except Timeout:
        raise CollectionLockedError(
            f"{path.parent} is {doing} (lock file {path}). Wait for it to finish (or give "
            "`--wait SECONDS` to wait longer); searches keep working meanwhile."
        ) from None
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ReadOnlyCollectionError(
                f"{path.parent} cannot be changed ({exc.strerror}): it can be searched, not "
                "written. Copy it somewhere writable to change it.") from None
        raise
    try:
        yield
    finally:
        lock.release()
