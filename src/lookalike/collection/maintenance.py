"""A collection's indexes: loading them in step with the manifest, compaction, rebuild, PCA
reduction, switching the index spec, and checking them against the store. Mixed into
:class:`lookalike.Collection`, whose state (folder, manifest, store, locks) these methods use."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from ..errors import CollectionLockedError, CorruptCollectionError, UsageError
from ..index import PCA, IndexSpec, parse_spec
from ..live import CompactionPolicy, CompactionReport, LiveIndex
from ..live.files import DELTA_INDEX, MAIN_INDEX, VerifyReport, file_stamp, verify
from ..live.milvus import MilvusLiveIndex, claim_milvus, verify_milvus
from ..storage import Store
from ..types import ReduceReport
from .files import remove_quietly, write_durably
from .manifest import MANIFEST, now, write_manifest

COMPACT_LOCK = ".compact.lock"
#: Present while `reduce` switches projections: the index files may belong to either one.
REDUCING = ".reduce-pending"


class IndexMaintenance:
    """The index-maintenance half of a Collection (see the module docstring)."""

    path: Path
    manifest: dict[str, Any]
    spec: IndexSpec
    store: Store
    dim: int
    writer: Callable[..., contextlib.AbstractContextManager[None]]
    _live: LiveIndex | MilvusLiveIndex | None
    _live_pca: str | None
    _live_lock: threading.Lock
    _manifest_stamp: tuple[int, int, int] | None

    # -- the live indexes, kept in step with the manifest -------------------------------------

    @property
    def live(self) -> LiveIndex | MilvusLiveIndex:
        """The main and delta indexes, kept in step with the store and with the manifest's
        projection: after a `reduce` in any process they are reloaded on next use."""
        self._sync_manifest()
        live = self._live
        if live is not None and (self._is_current(live) or self._reducing()):
            return live  # while a reduce runs, the old indexes stay right for their projection
        # Another thread may be loading the new indexes: search with the old ones meanwhile.
        if not self._live_lock.acquire(blocking=live is None):
            return live  # type: ignore[return-value]
        try:
            if self._live is live:
                self._replace_live()
            return self._live  # type: ignore[return-value]
        finally:
            self._live_lock.release()

    def _is_current(self, live: LiveIndex | MilvusLiveIndex) -> bool:
        """Whether ``live`` has the manifest's projection and index spec."""
        return self._live_pca == self._pca_file() and live.spec == self.spec

    def _new_live(self, *, load: bool = True) -> tuple[LiveIndex | MilvusLiveIndex, str | None]:
        """Indexes with the manifest's projection, and its PCA file name."""
        name = self._pca_file()
        projection = PCA.load(self.path / name) if name else None
        live: LiveIndex | MilvusLiveIndex
        if self.spec.milvus is not None:  # Milvus holds every vector: no files to trust or not
            live = MilvusLiveIndex(self.path, self.spec, self.dim, self.store, self._policy(),
                                   load=load, projection=projection,
                                   token=settings.resolve("milvus_token"))
        else:
            live = LiveIndex(self.path, self.spec, self.dim, self.store, self._policy(),
                             load=load, projection=projection,
                             main_is_current=lambda: self._main_is_current(name))
        if self._live is not None:
            live.reload_in_background = self._live.reload_in_background
        return live, name

    def _replace_live(self, *, load: bool = True) -> LiveIndex | MilvusLiveIndex:
        # The caller holds _live_lock.
        live, name = self._new_live(load=load)
        self._live, self._live_pca = live, name
        return live

    def _sync_manifest(self) -> None:
        """Re-read the manifest if another process replaced it (one stat when it did not)."""
        stamp = file_stamp(self.path / MANIFEST)
        if stamp != self._manifest_stamp:
            try:
                self.manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CorruptCollectionError(f"Cannot read {self.path / MANIFEST}: {exc}") from None
            self._manifest_stamp = stamp
            self.spec = parse_spec(self.manifest["index"]["spec"])  # `bench --apply` changes it

    def _pca_file(self) -> str | None:
        entry = self.manifest.get("pca")
        return entry["file"] if entry else None

    def _reducing(self) -> bool:
        return (self.path / REDUCING).exists()

    def _main_is_current(self, pca_file: str | None) -> bool:
        # Whether main.index on disk was built with this projection: no reduce under way and
        # none finished since (a new reduce always writes a new PCA file name).
        self._sync_manifest()
        return not self._reducing() and self._pca_file() == pca_file

    @property
    def index_dim(self) -> int:
        """The dimension the index holds: the PCA's after `reduce`, else the model's."""
        self._sync_manifest()
        entry = self.manifest.get("pca")
        return int(entry["dim"]) if entry else self.dim

    @staticmethod
    def _policy() -> CompactionPolicy:
        return CompactionPolicy(
            delta_min=settings.resolve("compact_min_delta"),
            delta_fraction=settings.resolve("compact_delta_fraction"),
            tombstone_fraction=settings.resolve("compact_tombstone_fraction"),
        )

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
        the repair for anything `verify` reports."""
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

        Stored vectors keep the model's full dimension, so this can be redone with another
        ``dim`` at any time. Every vector entering the index and every query goes through the
        PCA and is re-normalised. Other processes switch on their next search; until the new
        index files are written they keep their old ones (a reader that opens meanwhile builds
        exact in-memory indexes instead). An interrupted reduce is finished by the next
        compaction or `rebuild`.
        """
        if dim < 0:
            raise UsageError(f"--dim must be a positive number of dimensions (or 0: off), "
                             f"got {dim}.")
        if sample < 1:
            raise UsageError(f"--sample must be at least 1, got {sample}.")
        with self.writer(wait), file_lock(self.path / COMPACT_LOCK,
                                           "being compacted by another process", wait):
            before = self._index_bytes()
            dim_before, started = self.index_dim, time.perf_counter()
            pca = None
            if dim:
                pca = PCA.fit(self.store.sample_vectors(sample, seed=seed), dim, whiten=whiten)
            fit_seconds = time.perf_counter() - started
            write_durably(self.path / REDUCING, b"")  # readers stop trusting the index files
            manifest = dict(self.manifest)
            manifest.pop("pca", None)
            if pca is not None:
                name = f"pca-{secrets.token_hex(4)}.npz"  # a new name: tells old readers apart
                pca.save(self.path / name)
                manifest["pca"] = {
                    "dim": pca.dim, "whiten": pca.whiten, "file": name,
                    "trained_on": pca.trained_on, "seed": seed,
                    "explained_variance": round(pca.explained_variance_ratio, 6),
                }
            self.manifest = manifest
            self._touch_manifest()
            remove_quietly(self.path / DELTA_INDEX)  # the old projection's: never load it again
            live, name = self._new_live(load=False)  # this handle searches the old meanwhile
            report = live.compact()
            with self._live_lock:
                self._live, self._live_pca = live, name
            remove_quietly(self.path / REDUCING)
            for stale in self.path.glob("pca-*.npz"):
                if stale.name != self._pca_file():
                    remove_quietly(stale)
        return ReduceReport(
            dim_before=dim_before, dim_after=live.dim, whiten=bool(pca and pca.whiten),
            explained_variance=pca.explained_variance_ratio if pca else None,
            trained_on=pca.trained_on if pca else 0, index_bytes_before=before,
            index_bytes_after=self._index_bytes(), vectors=report.main_vectors,
            fit_seconds=fit_seconds, build_seconds=report.seconds,
        )

    def _index_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.path / MAIN_INDEX, self.path / DELTA_INDEX)
                   if f.is_file())

    def set_index(self, spec: str, *, search: dict[str, int] | None = None) -> CompactionReport:
        """Switch to another index spec (and default search knobs, e.g. ``{"ef_search": 48}``),
        recorded in the manifest, and rebuild the index with it."""
        parsed = parse_spec(spec)
        with self.writer():
            if parsed.milvus is not None and (self.spec.milvus is None
                                              or parsed.milvus.where != self.spec.milvus.where):
                claim_milvus(parsed, self.path, self.index_dim, settings.resolve("milvus_token"))
            self.manifest["index"] = {"spec": parsed.text, "search": dict(search or {})}
            self._touch_manifest()
            self.spec = parsed
            return self.rebuild()

    def search_defaults(self) -> dict[str, int]:
        """The per-call search knobs recorded for this collection (by `lookalike bench --apply`)."""
        return dict(self.manifest["index"].get("search", {}))

    def index_vectors(self) -> np.ndarray:
        """Every active image's vector as the index holds it, (n, dim) float32."""
        chunks = [vectors for _, vectors in self.live.vectors()]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.index_dim), np.float32)

    def verify(self) -> VerifyReport:
        """Check that the index files agree with the store; changes nothing."""
        if self.spec.milvus is not None:
            report = verify_milvus(self.spec, self.path, self.index_dim, self.store,
                                   settings.resolve("milvus_token"))
        else:
            report = verify(self.path, self.spec, self.index_dim, self.store)
        problems = list(report.problems)
        pca_file = self._pca_file()
        if pca_file and not (self.path / pca_file).is_file():
            problems.append(f"the PCA file {pca_file} is missing; run `lookalike reduce` again")
        if self._reducing():
            problems.append("a `lookalike reduce` is under way or was interrupted: the index "
                            "files may not match the PCA")
        return dataclasses.replace(report, problems=tuple(problems))

    def _touch_manifest(self) -> None:
        self.manifest["updated"] = now()
        write_manifest(self.path, self.manifest)


@contextlib.contextmanager
def file_lock(path: Path, doing: str, wait: float = 0.0) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=wait, poll_interval=0.02)
    except Timeout:
        raise CollectionLockedError(
            f"{path.parent} is {doing} (lock file {path}). Wait for it to finish; searches "
            "keep working meanwhile."
        ) from None
    try:
        yield
    finally:
        lock.release()
