"""Index specifications: a short, factory-style string that says which ANN structure to build.

``auto``   exact ``Flat`` while the collection is small, ``HNSW32`` once it passes 20,000 vectors.
``Flat``   exact inner-product search.
``HNSW<M>[,efConstruction=<n>]``  a Faiss HNSW graph with M links per node (default M=32,
           efConstruction=128); searched with ``ef_search``.
``HNSW<M>,SQ8[,efConstruction=<n>]``  the same graph over 8-bit scalar-quantised vectors
           (a byte per dimension instead of four; scores are approximate).
``IVF<nlist>,Flat``  an inverted file of nlist k-means cells holding exact vectors; searched with
           ``nprobe`` cells.
``IVF<nlist>,PQ<m>``  the same cells holding m-byte product-quantised codes (scores approximate).
``IVF<nlist>,PQ<m>x4fs,RFlat``  4-bit PQ fast-scan codes whose best ``k_factor * k`` candidates
           are re-ranked with the exact vectors.
``ScaNN[,leaves=<n>]``  Google's ScaNN (the ``scann`` extra): a tree of n leaves (default
           √vectors), anisotropic hashing, exact re-ranking; searched with ``leaves``.
``milvus://host:19530/name[?index=HNSW&M=32&efConstruction=64]``, ``milvus-lite:[file.db/]name``
           a Milvus collection (the ``milvus`` extra) holds the vectors: see milvus_spec.py.
``qdrant://host:6333/name[?m=32&ef_construct=128]``, ``qdrant-edge:[dir/]name[?index=exact]``
           a Qdrant collection (the ``qdrant`` extra) holds the vectors: see qdrant_spec.py.

Quantised and partitioned kinds are *trainable*: they learn their cells and codebooks from a sample
of the vectors. With too few vectors to train on (fewer than 39 per centroid, the least Faiss's
k-means accepts without warning) an index of that spec is built as exact ``Flat`` instead, the way
``auto`` starts out, and ``describe`` says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InvalidSpecError
from .milvus_spec import MilvusSpec, is_milvus_spec, parse_milvus_spec
from .qdrant_spec import QdrantSpec, is_qdrant_spec, parse_qdrant_spec

AUTO_HNSW_THRESHOLD = 20_000
# Measured on 1M x 256 vectors (README, "Index types at scale"): against 64, a 20 % longer build
# buys recall 0.95 at a third more queries/s.
DEFAULT_EF_CONSTRUCTION = 128
POINTS_PER_CENTROID = 39  # Faiss's k-means warns below this many training points per centroid
SQ_MIN_TRAIN = 1_000  # per-dimension ranges learnt from fewer vectors clip too many later ones
TRAIN_SAMPLE = 65_536  # vectors to train on (more only if the centroids need more)
DEFAULT_NPROBE_DIVISOR, MIN_DEFAULT_NPROBE = 16, 8  # IVF: visit nlist/16 cells, at least 8

FORMS = (
    "'auto', 'Flat', 'HNSW<M>[,efConstruction=<n>]', 'HNSW<M>,SQ8[,efConstruction=<n>]', "
    "'IVF<nlist>,Flat', 'IVF<nlist>,PQ<m>', 'IVF<nlist>,PQ<m>x4fs,RFlat', 'ScaNN[,leaves=<n>]' "
    "or a Milvus or Qdrant collection ('milvus://HOST:PORT/NAME', 'milvus-lite:FILE.db/NAME', "
    "'qdrant://HOST:PORT/NAME', 'qdrant-edge:DIR/NAME')"
)
_HNSW = re.compile(r"^HNSW(\d+)?(,SQ8)?(?:,efConstruction=(\d+))?$", re.IGNORECASE)
_IVF = re.compile(r"^IVF(\d+),(?:(Flat)|PQ(\d+)|PQ(\d+)x4fs,RFlat)$", re.IGNORECASE)
_SCANN = re.compile(r"^ScaNN(?:,leaves=(\d+))?$", re.IGNORECASE)
_HNSW_RANGES = "M must be 4-256 and efConstruction 8-4096"
_RANGES = {  # name: (lowest, highest, what the error says)
    "M": (4, 256, _HNSW_RANGES),
    "efConstruction": (8, 4096, _HNSW_RANGES),
    "nlist": (1, 65_536, "nlist must be 1-65536"),
    "m": (1, 1024, "PQ<m> must be 1-1024"),
    "leaves": (1, 65_536, "leaves must be 1-65536"),
}


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index spec. ``kind`` is what gets built now: ``auto``, a ScaNN spec without
    ``leaves`` and a trainable spec with too few vectors resolve by size in :meth:`for_size`."""

    text: str  # the spec as the user gave it, canonicalised; stays the same once resolved
    kind: str  # "flat", "hnsw", "ivf" or "scann"
    m: int = 32  # HNSW links per node
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    auto: bool = False
    quantizer: str | None = None  # vector codes: None (float32), "SQ8" (hnsw) or "PQ" (ivf)
    nlist: int = 0  # IVF cells
    pq_m: int = 0  # PQ sub-quantisers (bytes per vector at 8 bits, half that at 4)
    fast_scan: bool = False  # 4-bit PQ fast-scan codes, re-ranked exactly (RFlat)
    leaves: int | None = None  # ScaNN tree leaves; None: √n, fixed by for_size
    fallback: IndexSpec | None = None  # kind "flat" built because this spec had too few vectors
    milvus: MilvusSpec | None = None  # kind "milvus": where the collection is, which index
    qdrant: QdrantSpec | None = None  # kind "qdrant": the same for a Qdrant collection

    def for_size(self, n: int) -> IndexSpec:
        """The concrete spec to build for ``n`` vectors (to hold, or to train on)."""
        if self.auto:
            kind = "hnsw" if n >= AUTO_HNSW_THRESHOLD else "flat"
            return IndexSpec(self.text, kind, self.m, self.ef_construction)
        if self.trainable and n < self.min_train:
            return IndexSpec(self.text, "flat", fallback=self)
        if self.kind == "scann" and self.leaves is None:
            return replace(self, leaves=math.isqrt(n))  # >= 39, so n >= 39 per leaf
        return self

    @property
    def trainable(self) -> bool:
        """Whether building needs a training sample (cells, codebooks or scalar ranges)."""
        return self.kind in ("ivf", "scann") or self.quantizer is not None

    @property
    def min_train(self) -> int:
        """The fewest vectors this spec trains on; with fewer, :meth:`for_size` gives Flat."""
        if self.kind == "ivf":
            codes = 0 if self.quantizer is None else 16 if self.fast_scan else 256
            return POINTS_PER_CENTROID * max(self.nlist, codes)
        if self.kind == "scann":  # 16 hashing centres per block; √n leaves start at n = 39²
            return POINTS_PER_CENTROID * max(self.leaves or POINTS_PER_CENTROID, 16)
        return SQ_MIN_TRAIN if self.quantizer == "SQ8" else 0

    def train_size(self, n: int) -> int:
        """How many of ``n`` vectors to sample for training."""
        return min(n, max(self.min_train, TRAIN_SAMPLE))

    @property
    def default_nprobe(self) -> int:
        """IVF cells a search visits unless told otherwise: a sixteenth, at least 8."""
        return min(self.nlist, max(MIN_DEFAULT_NPROBE, self.nlist // DEFAULT_NPROBE_DIVISOR))

    def check_dim(self, dim: int) -> None:
        """Raise :class:`InvalidSpecError` if vectors of ``dim`` cannot be coded by this spec."""
        if self.kind == "ivf" and self.quantizer == "PQ" and dim % self.pq_m:
            choices = [m for m in (4, 8, 16, 32, 64, 128) if dim % m == 0]
            raise InvalidSpecError(
                f"Index spec {self.text!r} splits vectors into {self.pq_m} parts, but the "
                f"dimension {dim} is not a multiple of {self.pq_m}: pick PQ<m> with m from "
                f"{', '.join(map(str, choices))}."
            )

    @property
    def factory_string(self) -> str:
        """The ``faiss.index_factory`` string of an IVF spec (built only from parsed fields)."""
        if self.quantizer is None:
            return f"IVF{self.nlist},Flat"
        if self.fast_scan:
            return f"IVF{self.nlist},PQ{self.pq_m}x4fs,RFlat"
        return f"IVF{self.nlist},PQ{self.pq_m}"

    @property
    def database(self) -> str | None:
        """Where a vector database (Milvus, Qdrant) holds the vectors; None: index files."""
        target = self.milvus or self.qdrant
        return target.where if target is not None else None

    def embedded_data(self, base: Path) -> Path | None:
        """Where an embedded engine keeps the vectors (Milvus Lite's file, Qdrant Edge's shard
        folder), a relative location taken under ``base`` (the collection folder); None for
        index files and servers."""
        if self.milvus is not None and self.milvus.lite_file is not None:
            where = Path(self.milvus.lite_file).expanduser()
        elif self.qdrant is not None and self.qdrant.edge_dir is not None:
            where = Path(self.qdrant.edge_dir).expanduser() / self.qdrant.name
        else:
            return None
        return (base / where if not where.is_absolute() else where).resolve()

    @property
    def describe(self) -> str:
        if self.milvus is not None:
            return self.milvus.canonical(self)
        if self.qdrant is not None:
            return self.qdrant.canonical(self)
        if self.kind == "flat":
            if self.fallback is None:
                return "Flat"
            fallback = self.fallback
            return f"Flat ({fallback.describe} needs {fallback.min_train:,} vectors to train)"
        if self.kind == "hnsw":
            sq = ",SQ8" if self.quantizer == "SQ8" else ""
            return f"HNSW{self.m}{sq},efConstruction={self.ef_construction}"
        if self.kind == "ivf":
            return self.factory_string
        return "ScaNN" if self.leaves is None else f"ScaNN,leaves={self.leaves}"


def parse_spec(text: str) -> IndexSpec:
    """Parse an index spec string; raises :class:`InvalidSpecError` naming the valid forms."""
    if is_milvus_spec(text):
        return parse_milvus_spec(text)
    if is_qdrant_spec(text):
        return parse_qdrant_spec(text)
    cleaned = re.sub(r"\s+", "", text)
    if cleaned.lower() == "auto":
        return IndexSpec("auto", "flat", auto=True)
    if cleaned.lower() == "flat":
        return IndexSpec("Flat", "flat")
    if match := _HNSW.match(cleaned):
        m = _bounded(text, "M", match.group(1), 32)
        ef_construction = _bounded(text, "efConstruction", match.group(3),
                                   DEFAULT_EF_CONSTRUCTION)
        quantizer = "SQ8" if match.group(2) else None
        spec = IndexSpec("", "hnsw", m, ef_construction, quantizer=quantizer)
    elif match := _IVF.match(cleaned):
        nlist = _bounded(text, "nlist", match.group(1), 0)
        pq = match.group(3) or match.group(4)
        spec = IndexSpec("", "ivf", nlist=nlist, quantizer=None if match.group(2) else "PQ",
                         pq_m=_bounded(text, "m", pq, 0) if pq else 0,
                         fast_scan=match.group(4) is not None)
    elif match := _SCANN.match(cleaned):
        leaves = _bounded(text, "leaves", match.group(1), 0) if match.group(1) else None
        spec = IndexSpec("", "scann", leaves=leaves)
    else:
        raise InvalidSpecError(
            f"Unknown index spec {text!r}. Use {FORMS} (e.g. 'HNSW32', 'IVF1024,Flat' or "
            "'IVF1024,PQ32x4fs,RFlat')."
        )
    return replace(spec, text=spec.describe)


def _bounded(text: str, name: str, value: str | None, default: int) -> int:
    number = default if value is None else int(value)
    low, high, ranges = _RANGES[name]
    if not low <= number <= high:
        raise InvalidSpecError(f"Index spec {text!r} is out of range: {ranges}. Use {FORMS}.")
    return number
