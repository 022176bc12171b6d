"""Google's ScaNN as an index backend (the ``scann`` extra): a k-means tree over the vectors,
anisotropic 4-bit hashing to score the searched leaves, exact float32 re-ranking of the best.

ScaNN numbers its vectors 0..n-1; the ids (store primary keys) are kept beside it. It has no id
filter, so removed images are excluded by fetching more candidates than asked for and dropping
them, fetching more again (and searching more leaves) while fewer than k survive. It cannot grow:
a ScaNN main index is built from every active vector at once and new vectors wait in the delta.

On disk it is one file: an uncompressed tar of ScaNN's serialised files, led by a small JSON
header (what :func:`is_scann_file` looks for) and the ids.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CorruptCollectionError, InvalidSpecError, MissingDependencyError
from .spec import IndexSpec

HEADER = "lookalike-scann.json"
FORMAT = 1
DEFAULT_K_FACTOR = 10  # ScaNN's own examples re-rank 100 candidates for 10 results
SEARCHED_LEAVES_DIVISOR = 10  # search a tenth of the leaves unless told otherwise
_SCANN_FILES = ".pb", ".pbtxt", ".npy"  # what ScaNN serialises (never its pickled docids)


def _scann() -> Any:
    try:
        from scann.scann_ops.py import scann_ops_pybind
    except ImportError:
        raise MissingDependencyError(
            "scann", "The ScaNN index", "pip install 'lookalike[scann]'"
        ) from None
    return scann_ops_pybind


def is_scann_file(path: Path) -> bool:
    """Whether ``path`` holds a ScaNN index written by :meth:`ScannIndex.save` (a tar whose
    first member is the header); reads one block."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    return len(head) == 512 and head[:100].rstrip(b"\0") == HEADER.encode()


class ScannIndex:
    """A ScaNN searcher over unit vectors with int64 ids, saved atomically to one file."""

    def __init__(self, searcher: Any, ids: np.ndarray, spec: IndexSpec, dim: int,
                 nbytes: int | None = None) -> None:
        self._searcher = searcher
        self._ids = ids
        self.spec = spec
        self._dim = dim
        self._nbytes = nbytes

    @classmethod
    def build(cls, spec: IndexSpec, dim: int, ids: np.ndarray | None = None,
              vectors: np.ndarray | None = None, *, train: np.ndarray | None = None,
              threads: int | None = None) -> ScannIndex:
        """A searcher over every one of ``vectors``, trained by ScaNN on a sample of them (so
        ``train`` is not used) with ``threads`` threads (default: every core). Needs at least
        ``spec.min_train`` vectors; :func:`lookalike.index.build_index` builds Flat below that."""
        del train
        n = 0 if ids is None else len(ids)
        concrete = spec.for_size(n)
        if concrete.kind != "scann":
            raise InvalidSpecError(
                f"Index spec {spec.text!r} needs at least {spec.min_train:,} vectors to build a "
                f"ScaNN index, got {n:,}."
            )
        scann = _scann()
        leaves = _leaves(concrete)
        db = np.ascontiguousarray(vectors, dtype=np.float32)
        builder = (
            scann.builder(db, 10, "dot_product")
            .tree(num_leaves=leaves,
                  num_leaves_to_search=max(1, leaves // SEARCHED_LEAVES_DIVISOR),
                  training_sample_size=concrete.train_size(n),
                  min_partition_size=min(50, n // (2 * leaves)))
            .score_ah(2, anisotropic_quantization_threshold=0.2,
                      training_sample_size=concrete.train_size(n))
            .reorder(DEFAULT_K_FACTOR * 10)  # a default only: searches always say how many
        )
        builder.set_n_training_threads(threads or os.cpu_count() or 1)
        searcher = builder.build()
        return cls(searcher, np.array(ids, dtype=np.int64), concrete, dim)

    @classmethod
    def load(cls, path: Path, spec: IndexSpec) -> ScannIndex:
        """Read a file written by :meth:`save`; ``spec.text`` comes from the caller."""
        scann = _scann()
        try:
            with tarfile.open(path, "r:") as tar, tempfile.TemporaryDirectory() as folder:
                header = json.loads(_member(tar, HEADER))
                ids = np.load(io.BytesIO(_member(tar, "ids.npy")), allow_pickle=False)
                for member in tar.getmembers():
                    if member.name.endswith(_SCANN_FILES) and member.name != "ids.npy":
                        Path(folder, _plain(member.name)).write_bytes(_member(tar, member.name))
                searcher = scann.load_searcher(folder)
        except (tarfile.TarError, KeyError, ValueError, RuntimeError, EOFError) as exc:
            raise CorruptCollectionError(
                f"Index file {path} is unreadable ({exc}); run `lookalike rebuild` to "
                "rebuild it from the stored vectors."
            ) from None
        if header.get("format") != FORMAT or len(ids) != searcher.size():
            raise CorruptCollectionError(f"Index file {path} was not written by this lookalike.")
        concrete = IndexSpec(spec.text, "scann", leaves=int(header["leaves"]))
        return cls(searcher, ids.astype(np.int64), concrete, int(header["dim"]),
                   nbytes=path.stat().st_size)

    def save(self, path: Path) -> None:
        """Serialise into a temporary folder beside ``path``, pack that into a temporary file
        and rename it over ``path``: readers never see half a file."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        folder = path.with_name(f".{path.name}.{os.getpid()}.dir.tmp")
        try:
            folder.mkdir()
            self._searcher.serialize(str(folder), relative_path=True)
            header = {"format": FORMAT, "dim": self.dim, "leaves": self.spec.leaves,
                      "ntotal": self.ntotal}
            ids = io.BytesIO()
            np.save(ids, self._ids, allow_pickle=False)
            with tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as tar:
                _add(tar, HEADER, json.dumps(header).encode())
                _add(tar, "ids.npy", ids.getvalue())
                for name in sorted(os.listdir(folder)):
                    if name.endswith(_SCANN_FILES):
                        tar.add(folder / name, arcname=name)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            self._nbytes = tmp.stat().st_size
            os.replace(tmp, path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            tmp.unlink(missing_ok=True)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    @property
    def memory_bytes(self) -> int:
        """Size of the serialised searcher (float32 vectors for re-ranking, hash codes, tree,
        ids): what it takes on disk and, within a few percent, in memory."""
        if self._nbytes is None:
            with tempfile.TemporaryDirectory() as folder:
                self._searcher.serialize(folder, relative_path=True)
                files = sum(entry.stat().st_size for entry in os.scandir(folder))
            self._nbytes = files + self._ids.nbytes
        return self._nbytes

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def max_id(self) -> int:
        return int(self._ids.max()) if len(self._ids) else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError(
            "A ScaNN index cannot take new vectors in place: new vectors stay in the delta "
            "until the next compaction builds a new ScaNN index from all of them."
        )

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        k_factor: int | None = None,
        leaves: int | None = None,
        exclude: Collection[int] = (),
        allowed: np.ndarray | None = None,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; missing results have id -1.

        ``leaves`` (tree leaves to search, default a tenth) and ``k_factor`` (candidates
        re-ranked exactly per result, default 10) apply to this call only; ``ef_search`` and
        ``nprobe`` are other kinds' knobs and ignored. Ids in ``exclude`` never come back, nor
        ids not in ``allowed`` (when given): ScaNN cannot filter inside its search, so it
        fetches more until enough pass, or it has searched everything (``exact`` then).
        """
        del ef_search, nprobe
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        total = self.ntotal
        k = max(1, min(k, total))
        n = len(queries)
        scores = np.full((n, k), -np.inf, np.float32)
        found = np.full((n, k), -1, np.int64)
        banned = np.fromiter(exclude, np.int64, count=len(exclude)) if exclude else None
        most_leaves = _leaves(self.spec)
        searched = max(1, min(leaves or most_leaves // SEARCHED_LEAVES_DIVISOR, most_leaves))
        factor = k_factor or DEFAULT_K_FACTOR
        fetch = k if banned is None and allowed is None else min(total, 2 * k)
        if allowed is not None and exact:
            fetch, searched = total, most_leaves
        todo = np.arange(n)
        while len(todo):
            rows, dist = self._fetch(queries[todo], fetch, min(total, factor * fetch), searched)
            keep = ~np.isnan(dist)  # ScaNN pads missing results with NaN
            ids = np.where(keep, self._ids[np.where(keep, rows, 0).astype(np.int64)], -1)
            if banned is not None:
                keep &= ~np.isin(ids, banned)
            if allowed is not None:
                keep &= np.isin(ids, allowed)
            complete = keep.sum(axis=1) >= k
            final = fetch >= total and searched >= most_leaves
            for i in np.flatnonzero(complete | final):
                live = np.flatnonzero(keep[i])[:k]
                scores[todo[i], :len(live)] = dist[i, live]
                found[todo[i], :len(live)] = ids[i, live]
            todo = todo[~(complete | final)]
            # Short of k: the candidates were excluded, or the searched leaves ran out of points.
            fetch, searched = min(total, 2 * fetch), min(most_leaves, 2 * searched)
        return scores, found

    def _fetch(self, queries: np.ndarray, final: int, pre_reorder: int,
               leaves: int) -> tuple[np.ndarray, np.ndarray]:
        # One query runs on the calling thread; a batch on ScaNN's own pool, unless the caller
        # allowed one thread (omp_threads(1), as for Faiss).
        import faiss

        parallel = len(queries) > 1 and faiss.omp_get_max_threads() > 1
        search = (self._searcher.search_batched_parallel if parallel
                  else self._searcher.search_batched)
        rows, dist = search(queries, final_num_neighbors=final,
                            pre_reorder_num_neighbors=max(final, pre_reorder),
                            leaves_to_search=leaves)
        return np.asarray(rows), np.asarray(dist, dtype=np.float32)


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.getmember(name)
    data = tar.extractfile(member) if member.isfile() else None
    if data is None:
        raise ValueError(f"{name} is not a file")
    return data.read()


def _plain(name: str) -> str:
    if os.path.basename(name) != name or name.startswith("."):
        raise ValueError(f"unexpected member {name!r}")
    return name


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _leaves(spec: IndexSpec) -> int:
    """The tree's leaves, which ``IndexSpec.for_size`` fixes on every spec a ScaNN index uses."""
    if spec.leaves is None:
        raise ValueError(f"ScaNN spec {spec.text!r} has no leaf count; resolve it with for_size")
    return spec.leaves
