"""The embedded vector index: Faiss, inner product on unit vectors (= cosine similarity).

Ids are the metadata store's primary keys (an ``IDMap2`` around the index). Removed images stay in
an HNSW graph (Faiss cannot unlink nodes) and are excluded during the search with an id selector,
so k live results still come back; a rebuild drops them for good.

Searches go to the wrapped index directly, with the selector translated to its internal labels
and the labels mapped back to ids here: ``IndexIDMap2`` translates the selector of the parameters
it is given only, and an ``IndexRefine`` ignores its own, so only the innermost parameters can
carry it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CorruptCollectionError
from .exact import nearest_among
from .spec import IndexSpec

if TYPE_CHECKING:
    import faiss

DEFAULT_EF_SEARCH = 64
DEFAULT_K_FACTOR = 4


@contextmanager
def omp_threads(threads: int) -> Iterator[None]:
    """Let Faiss use at most ``threads`` OpenMP threads inside the block (the setting is per
    calling thread in OpenMP, so concurrent callers do not disturb each other)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(min(threads, before))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class FaissIndex:
    """A Faiss index over unit vectors with int64 ids, saved atomically to one file."""

    def __init__(self, index: faiss.IndexIDMap2, spec: IndexSpec) -> None:
        import faiss

        self._index = index  # the IndexIDMap2, which owns what it wraps
        self._inner = faiss.downcast_index(index.index)
        self.spec = spec
        self._max_id: int | None = None  # cached: asked for on every write and refresh
        self._id_array: np.ndarray | None = None  # internal label -> id, cached for searches
        self._id_order: tuple[np.ndarray, np.ndarray] | None = None  # labels, ids in id order
        self._nbytes: int | None = None

    @classmethod
    def build(
        cls, spec: IndexSpec, dim: int, ids: np.ndarray | None = None,
        vectors: np.ndarray | None = None, *, train: np.ndarray | None = None,
    ) -> FaissIndex:
        """A new index of ``spec`` holding ``vectors``. A trainable spec learns from ``train``
        (default: ``vectors``); ``auto``, or too few vectors to train on, resolve the kind."""
        import faiss

        n = 0 if ids is None else len(ids)
        concrete = spec.for_size(len(train) if train is not None and spec.trainable else n)
        concrete.check_dim(dim)
        if concrete.kind == "scann":
            raise ValueError("ScaNN specs are built by lookalike.index.build_index")
        inner: faiss.Index
        if concrete.kind == "hnsw":
            graph: faiss.IndexHNSW
            if concrete.quantizer == "SQ8":
                # faiss's stub wants a ScalarQuantizer here; SWIG takes the quantizer type.
                qtype: int = faiss.ScalarQuantizer.QT_8bit
                graph = faiss.IndexHNSWSQ(dim, qtype,  # type: ignore[arg-type]
                                          concrete.m, faiss.METRIC_INNER_PRODUCT)
            else:
                graph = faiss.IndexHNSWFlat(dim, concrete.m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = concrete.ef_construction
            inner = graph
        elif concrete.kind == "ivf":
            inner = faiss.index_factory(dim, concrete.factory_string, faiss.METRIC_INNER_PRODUCT)
            if isinstance(inner, faiss.IndexIVFPQ):
                # Slow, and only for Hamming filtering. (Missing from faiss's stub.)
                inner.do_polysemous_training = False  # type: ignore[attr-defined]
        else:
            inner = faiss.IndexFlatIP(dim)
        if concrete.trainable:
            sample = vectors if train is None else train
            inner.train(np.ascontiguousarray(sample, dtype=np.float32))
        index = cls(faiss.IndexIDMap2(inner), concrete)
        if ids is not None and vectors is not None and n:
            index.add(ids, vectors)
        return index

    @classmethod
    def load(cls, path: Path, spec: IndexSpec) -> FaissIndex:
        """Read an index file; its kind and parameters come from the file, ``spec.text`` from
        the caller."""
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CorruptCollectionError(
                f"Index file {path} is unreadable ({exc}); run `lookalike rebuild` to "
                "rebuild it from the stored vectors."
            ) from None
        # read_index returns the typed outer object, which owns the memory: keep that one.
        if not isinstance(index, faiss.IndexIDMap2):
            raise CorruptCollectionError(f"Index file {path} was not written by lookalike.")
        concrete = _spec_of(faiss.downcast_index(index.index), spec)
        if concrete is None:
            raise CorruptCollectionError(f"Index file {path} was not written by lookalike.")
        return cls(index, concrete)

    def save(self, path: Path) -> None:
        """Write to a temporary file and rename it over ``path``: readers never see half a file."""
        import faiss

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                # Through Python's file: a write error (a full disk) is an OSError, and Faiss's
                # own writer does not also print "close error" to stderr.
                writer = faiss.PyCallbackIOWriter(fh.write)  # type: ignore[attr-defined]
                faiss.write_index(self._index, writer)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def memory_bytes(self) -> int:
        """Size of the serialised index (vectors or codes, graph or lists, ids): what it takes
        on disk and, within a few percent, in memory."""
        import faiss

        if self._nbytes is None:
            self._nbytes = int(faiss.serialize_index(self._index).nbytes)
        return self._nbytes

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def max_id(self) -> int:
        if self._max_id is None:
            ids = self.ids()
            self._max_id = int(ids.max()) if len(ids) else 0
        return self._max_id

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._index.add_with_ids(vectors, ids)
        self._id_array = self._id_order = self._nbytes = None
        if len(ids):
            self._max_id = max(self.max_id(), int(ids.max()))

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

        The knobs apply to this call only (never set on the shared index) and only to the kinds
        they belong to: ``ef_search`` (HNSW, default 64, raised to k); ``nprobe`` (IVF cells to
        visit, default nlist/16 but at least 8; more for queries whose cells hold fewer than k
        live vectors); ``k_factor`` (candidates re-ranked exactly per result, default 4).
        ``leaves`` is ScaNN's. Ids in ``exclude`` are skipped during the search. With
        ``allowed`` (ids), only those can come back: a bitmap over the index's labels filters
        the search; with ``exact`` too, every allowed vector is compared with the query.
        """
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if allowed is not None:
            return self._search_allowed(queries, k, allowed, exclude, exact, ef_search, nprobe,
                                        k_factor)
        selector = None
        if exclude:
            banned = np.fromiter(exclude, dtype=np.int64, count=len(exclude))
            # IDSelectorTranslated keeps a reference to the selector it wraps. It takes the
            # Int64Vector as well as an array; faiss's stub says only an array.
            selector = faiss.IDSelectorTranslated(
                self._index.id_map,  # type: ignore[arg-type]
                faiss.IDSelectorNot(faiss.IDSelectorBatch(banned)),
            )
        return self._probing(queries, k, selector, ef_search, nprobe, k_factor)

    def _probing(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None,
                 ef_search: int | None, nprobe: int | None,
                 k_factor: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of a search, visiting more IVF cells for queries short of k."""
        probes = max(1, min(nprobe or self.spec.default_nprobe, self.spec.nlist))
        scores, labels = self._search(queries, k, selector, ef_search, probes, k_factor)
        short = (labels < 0).any(axis=1)
        while self.spec.kind == "ivf" and short.any() and probes < self.spec.nlist:
            # The visited cells held fewer than k live vectors: visit more for those queries.
            probes = min(self.spec.nlist, 2 * probes)
            scores[short], labels[short] = self._search(queries[short], k, selector, ef_search,
                                                        probes, k_factor)
            short = (labels < 0).any(axis=1)
        return scores, self._to_ids(labels)

    def _search_allowed(self, queries: np.ndarray, k: int, allowed: np.ndarray,
                        exclude: Collection[int], exact: bool, ef_search: int | None,
                        nprobe: int | None, k_factor: int | None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Search among the ``allowed`` ids only (less ``exclude``)."""
        import faiss

        if exclude:
            allowed = np.setdiff1d(allowed, np.fromiter(exclude, np.int64, len(exclude)))
        labels = self._labels_of(allowed)
        n = len(queries)
        if not len(labels):
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        flat = self._flat_vectors() if exact else None
        if flat is not None:
            # Read just the allowed rows (cost by their number): a selector would test every
            # label (measured at 1M: 8.5 ms a query for 10,000 allowed, against 2 ms).
            return nearest_among(queries, flat[labels], self._id_map()[labels], k)
        bits = np.zeros(self.ntotal, bool)
        bits[labels] = True
        bitmap = np.packbits(bits, bitorder="little")  # Faiss reads bit i of byte i >> 3
        selector = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bitmap))
        if exact and self.spec.kind != "flat":
            # Every allowed vector, compared exactly from its codes: an HNSW graph's SQ8
            # storage through the selector, or an IVF's every cell.
            inner = self._inner
            if isinstance(inner, faiss.IndexHNSW):
                inner = faiss.downcast_index(inner.storage)
            if not isinstance(inner, faiss.IndexIVF):
                params = faiss.SearchParameters()
                params.sel = selector
                with omp_threads(1) if n == 1 else contextlib.nullcontext():
                    scores, found = inner.search(queries, k, params=params)
                return scores, self._to_ids(found)
            nprobe = self.spec.nlist
        return self._probing(queries, k, selector, ef_search, nprobe, k_factor)

    def _flat_vectors(self) -> np.ndarray | None:
        """The vectors the index keeps uncompressed, as a (ntotal, d) view (no copy; valid
        until the next add), or None (compressed: SQ8, PQ)."""
        import faiss

        inner = self._inner
        if isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        elif isinstance(inner, faiss.IndexRefine):
            inner = faiss.downcast_index(inner.refine_index)
        if not isinstance(inner, faiss.IndexFlat) or not inner.ntotal:
            return None
        return faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(
            inner.ntotal, inner.d)

    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        """The internal labels of those of ``ids`` this index holds."""
        cached = self._id_order
        if cached is None or len(cached[0]) != self.ntotal:
            order = np.argsort(self._id_map(), kind="stable")
            cached = self._id_order = (order, self._id_map()[order])
        order, held = cached
        ids = np.asarray(ids, np.int64)
        at = np.minimum(np.searchsorted(held, ids), max(len(held) - 1, 0))
        found = held[at] == ids if len(held) else np.zeros(len(ids), bool)
        return order[at[found]]

    def _id_map(self) -> np.ndarray:
        """Internal label -> id (cached)."""
        id_array = self._id_array
        if id_array is None or len(id_array) != self.ntotal:
            id_array = self._id_array = self.ids()
        return id_array

    def _search(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None,
                ef_search: int | None, nprobe: int,
                k_factor: int | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = inner_params = self._params(k, ef_search, nprobe)
        if self.spec.fast_scan:
            refine = faiss.IndexRefineSearchParameters()
            refine.k_factor = float(k_factor or DEFAULT_K_FACTOR)
            refine.base_index_params = inner_params
            params = refine
        if selector is not None:
            inner_params.sel = selector
        # One query runs on one thread: a team of threads only waits at the barrier for a core
        # that is busy elsewhere (measured: search p99 during a merge 6x worse with 2 threads).
        with omp_threads(1) if len(queries) == 1 else contextlib.nullcontext():
            return self._inner.search(queries, k, params=params)

    def _params(self, k: int, ef_search: int | None, nprobe: int) -> faiss.SearchParameters:
        import faiss

        if self.spec.kind == "hnsw":
            hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in faiss's stub
            hnsw.efSearch = max(ef_search or DEFAULT_EF_SEARCH, k)
            return hnsw
        if self.spec.kind == "ivf":
            ivf = faiss.SearchParametersIVF()
            ivf.nprobe = nprobe
            return ivf
        return faiss.SearchParameters()

    def _to_ids(self, labels: np.ndarray) -> np.ndarray:
        id_array = self._id_map()
        if not len(id_array):
            return np.full(labels.shape, -1, np.int64)
        return np.where(labels >= 0, id_array[np.maximum(labels, 0)], -1)


def _spec_of(inner: faiss.Index, spec: IndexSpec) -> IndexSpec | None:
    """The concrete spec of a loaded index, read from its structure (None: not lookalike's)."""
    import faiss

    if inner.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    text = spec.text
    if isinstance(inner, faiss.IndexFlat):
        fallback = spec if spec.trainable else None  # built Flat for lack of training vectors
        return IndexSpec(text, "flat", fallback=fallback)
    if isinstance(inner, faiss.IndexHNSW):
        hnsw = inner.hnsw
        if isinstance(inner, faiss.IndexHNSWFlat):
            quantizer = None
        elif isinstance(inner, faiss.IndexHNSWSQ):
            storage = faiss.downcast_index(inner.storage)
            if (not isinstance(storage, faiss.IndexScalarQuantizer)
                    or storage.sq.qtype != faiss.ScalarQuantizer.QT_8bit):
                return None
            quantizer = "SQ8"
        else:
            return None
        m = hnsw.nb_neighbors(1)  # type: ignore[attr-defined]  # not in faiss's stub
        return IndexSpec(text, "hnsw", m, hnsw.efConstruction,
                         quantizer=quantizer)
    if isinstance(inner, faiss.IndexIVFFlat):
        return IndexSpec(text, "ivf", nlist=inner.nlist)
    if isinstance(inner, faiss.IndexIVFPQ) and inner.pq.nbits == 8:
        return IndexSpec(text, "ivf", nlist=inner.nlist, quantizer="PQ", pq_m=inner.pq.M)
    if isinstance(inner, faiss.IndexRefineFlat):
        base = faiss.downcast_index(inner.base_index)
        if isinstance(base, faiss.IndexIVFPQFastScan) and base.pq.nbits == 4:
            return IndexSpec(text, "ivf", nlist=base.nlist, quantizer="PQ", pq_m=base.pq.M,
                             fast_scan=True)
    return None
