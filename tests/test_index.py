"""Every index kind against exact ground truth: seeded synthetic unit vectors, numpy brute force."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.errors import (
    CorruptCollectionError,
    InvalidSpecError,
    MissingDependencyError,
    UsageError,
)
from lookalike.index import (
    AUTO_HNSW_THRESHOLD,
    FaissIndex,
    IndexSpec,
    ScannIndex,
    build_index,
    load_index,
    omp_threads,
    parse_spec,
)

DIM = 64
K = 10
TIE = 1e-6  # a result counts as correct if it scores within TIE of the exact k-th best score
VALID_FORMS = ("'auto'", "'Flat'", "'HNSW<M>[,efConstruction=<n>]'",
               "'HNSW<M>,SQ8[,efConstruction=<n>]'", "'IVF<nlist>,Flat'", "'IVF<nlist>,PQ<m>'",
               "'IVF<nlist>,PQ<m>x4fs,RFlat'", "'ScaNN[,leaves=<n>]'")

# CI installs the scann extra: there a missing package is a failure, not a skip.
needs_scann = pytest.mark.skipif(
    importlib.util.find_spec("scann") is None and not os.environ.get("CI"),
    reason="the ScaNN backend needs `pip install 'lookalike[scann]'`",
)


# ---------------------------------------------------------------------------------------------
# Seeded data and exact ground truth
# ---------------------------------------------------------------------------------------------


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Dataset:
    """Clustered unit vectors stored under sparse ids, and queries near held-out points."""

    ids: np.ndarray  # (n,) int64, not 0..n-1: the index must keep its own id map
    vectors: np.ndarray  # (n, DIM) float32, unit norm
    queries: np.ndarray  # (q, DIM) float32, unit norm, none of them stored

    def row(self, ids: np.ndarray) -> np.ndarray:
        return (ids - 11) // 3

    def exact_scores(self, exclude: Collection[int] = ()) -> np.ndarray:
        """(q, n) exact inner products; excluded ids score -inf."""
        scores = self.queries @ self.vectors.T
        if exclude:
            scores[:, self.row(np.fromiter(exclude, np.int64, count=len(exclude)))] = -np.inf
        return scores


def make_dataset(n: int, n_queries: int, seed: int = 7) -> Dataset:
    """Points scattered around 100 centres in 16-dimensional subspaces (low intrinsic dimension,
    as with real embeddings); queries are perturbed copies of points that are not indexed."""
    rng = np.random.default_rng(seed)
    clusters, intrinsic = 100, 16
    centres = unit(rng.standard_normal((clusters, DIM)))
    bases = rng.standard_normal((clusters, intrinsic, DIM)) / np.sqrt(DIM)
    labels = rng.integers(0, clusters, n + n_queries)
    offsets = np.einsum("ni,nid->nd", rng.standard_normal((n + n_queries, intrinsic)),
                        bases[labels])
    points = unit(centres[labels] + offsets)
    held_out = points[n:]
    queries = unit(held_out + 0.02 * rng.standard_normal(held_out.shape))
    return Dataset(np.arange(n, dtype=np.int64) * 3 + 11, points[:n], queries)


def recall_at_k(data: Dataset, found: np.ndarray, k: int = K,
                exclude: Collection[int] = ()) -> float:
    """Share of returned ids that belong in the exact top k (ties with the k-th score count)."""
    exact = data.exact_scores(exclude)
    kth = -np.partition(-exact, k - 1, axis=1)[:, k - 1]
    hits = 0
    for q, row_ids in enumerate(found):
        row_ids = row_ids[row_ids >= 0]
        assert len(set(row_ids.tolist())) == len(row_ids), "an id came back twice"
        hits += int((exact[q, data.row(row_ids)] >= kth[q] - TIE).sum())
    return hits / (k * len(found))


def assert_scores_are_true_inner_products(data: Dataset, scores: np.ndarray,
                                          found: np.ndarray) -> None:
    """Every returned (score, id) pair is right, and results come best first."""
    exact = data.exact_scores()
    for q in range(len(found)):
        valid = found[q] >= 0
        np.testing.assert_allclose(scores[q][valid], exact[q, data.row(found[q][valid])],
                                   atol=1e-5)
        assert (np.diff(scores[q][valid]) <= 1e-6).all(), "results are not best first"


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_dataset(n=20_000, n_queries=200)


@pytest.fixture(scope="module")
def built(data: Dataset) -> Callable[[str], FaissIndex | ScannIndex]:
    """One index of each spec over ``data`` per module, built on one thread (on a busy machine
    OpenMP teams mostly wait for each other); 8-bit PQ trains on half the vectors (it is slow)."""
    indexes: dict[str, FaissIndex | ScannIndex] = {}

    def get(text: str) -> FaissIndex | ScannIndex:
        if text not in indexes:
            train = data.vectors[:10_000] if text.endswith("PQ16") else None
            with omp_threads(1):
                indexes[text] = build_index(parse_spec(text), DIM, data.ids, data.vectors,
                                            train=train)
        return indexes[text]

    return get


@pytest.fixture(scope="module")
def hnsw(built: Callable[[str], FaissIndex | ScannIndex]) -> FaissIndex | ScannIndex:
    return built("HNSW32")


@pytest.fixture(scope="module")
def flat(built: Callable[[str], FaissIndex | ScannIndex]) -> FaissIndex | ScannIndex:
    return built("Flat")


@pytest.fixture(params=["Flat", "HNSW32"])
def small_index(request: pytest.FixtureRequest) -> tuple[FaissIndex, Dataset]:
    """A 2,000-vector index of each kind, cheap enough to build per test."""
    small = make_dataset(n=2_000, n_queries=20, seed=3)
    return FaissIndex.build(parse_spec(request.param), DIM, small.ids, small.vectors), small


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auto", IndexSpec("auto", "flat", auto=True)),
        ("  AUTO\n", IndexSpec("auto", "flat", auto=True)),
        ("Flat", IndexSpec("Flat", "flat")),
        ("flat", IndexSpec("Flat", "flat")),
        ("HNSW32", IndexSpec("HNSW32,efConstruction=128", "hnsw", 32, 128)),
        ("hnsw", IndexSpec("HNSW32,efConstruction=128", "hnsw", 32, 128)),
        ("HNSW16,efConstruction=100", IndexSpec("HNSW16,efConstruction=100", "hnsw", 16, 100)),
        (" HNSW16, efConstruction = 100\t", IndexSpec("HNSW16,efConstruction=100", "hnsw", 16,
                                                      100)),
        ("HNSW24,SQ8", IndexSpec("HNSW24,SQ8,efConstruction=128", "hnsw", 24, 128,
                                 quantizer="SQ8")),
        ("hnsw,sq8,efconstruction=40", IndexSpec("HNSW32,SQ8,efConstruction=40", "hnsw", 32, 40,
                                                 quantizer="SQ8")),
        ("IVF1024,Flat", IndexSpec("IVF1024,Flat", "ivf", nlist=1024)),
        ("ivf256, flat", IndexSpec("IVF256,Flat", "ivf", nlist=256)),
        ("IVF1024,PQ32", IndexSpec("IVF1024,PQ32", "ivf", nlist=1024, quantizer="PQ", pq_m=32)),
        ("IVF4096,PQ64x4fs,RFlat", IndexSpec("IVF4096,PQ64x4fs,RFlat", "ivf", nlist=4096,
                                             quantizer="PQ", pq_m=64, fast_scan=True)),
        ("ScaNN", IndexSpec("ScaNN", "scann")),
        ("scann, leaves=2000", IndexSpec("ScaNN,leaves=2000", "scann", leaves=2000)),
    ],
)
def test_parse_spec_accepts_the_documented_forms(text: str, expected: IndexSpec) -> None:
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(spec.text) == spec  # the canonical text parses back to the same spec


def test_spec_describe() -> None:
    assert parse_spec("flat").describe == "Flat"
    assert parse_spec("HNSW16,efConstruction=100").describe == "HNSW16,efConstruction=100"
    assert parse_spec("auto").for_size(AUTO_HNSW_THRESHOLD).describe == "HNSW32,efConstruction=128"
    assert parse_spec("ScaNN").for_size(10_000).describe == "ScaNN,leaves=100"  # √n leaves
    assert (parse_spec("IVF64,Flat").for_size(100).describe
            == "Flat (IVF64,Flat needs 2,496 vectors to train)")


@pytest.mark.parametrize(
    ("text", "min_train"),
    [("Flat", 0), ("HNSW32", 0), ("auto", 0), ("HNSW32,SQ8", 1_000), ("IVF64,Flat", 64 * 39),
     ("IVF4,PQ8", 256 * 39), ("IVF4,PQ8x4fs,RFlat", 16 * 39), ("IVF1024,PQ8x4fs,RFlat", 1024 * 39),
     ("ScaNN", 39 * 39), ("ScaNN,leaves=100", 100 * 39)],
)
def test_trainable_specs_fall_back_to_flat_below_their_training_minimum(
    text: str, min_train: int
) -> None:
    spec = parse_spec(text)
    assert spec.trainable == (min_train > 0)
    if not spec.trainable:
        return
    assert spec.min_train == min_train
    below, enough = spec.for_size(min_train - 1), spec.for_size(min_train)
    assert below.kind == "flat" and below.text == spec.text
    assert below.describe.startswith("Flat (") and f"{min_train:,} vectors" in below.describe
    assert enough.kind == spec.kind and enough.for_size(min_train) == enough
    assert below.for_size(10**9) == below  # resolved: final, like a resolved auto


@pytest.mark.parametrize(
    ("text", "message"),
    [("IVF1024,PQ", "PQ<m>"), ("IVF0,Flat", "nlist must be 1-65536"),
     ("IVF64,PQ2000", "PQ<m> must be 1-1024"), ("ScaNN,leaves=0", "leaves must be 1-65536")],
)
def test_invalid_ivf_and_scann_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InvalidSpecError, match=re.escape(message)):
        parse_spec(text)


def test_pq_must_divide_the_dimension() -> None:
    small = make_dataset(n=12_000, n_queries=1)
    with pytest.raises(InvalidSpecError, match="dimension 64 is not a multiple of 48.*4, 8, 16"):
        build_index(parse_spec("IVF4,PQ48"), DIM, small.ids, small.vectors)


@pytest.mark.parametrize(
    "text",
    ["IVF", "IVF1024", "HNSW2", "HNSW32,efConstruction=1", "HNSW512", "", "   ",
     "HNSW32,ef=10", "Flat,HNSW32", "HNSWx", "HNSW32,efConstruction=64,SQ8", "HNSW32,SQ4",
     "IVF1024,SQ8", "IVF1024,PQ", "IVF1024,PQ16x4fs", "IVF1024,PQ16,RFlat", "IVF0,Flat",
     "IVF100000,Flat", "IVF64,PQ0", "IVF64,PQ2000", "ScaNN,leaves=0", "ScaNN,nprobe=3",
     "ScaNN32", "IVF1024,Flat,RFlat", "OPQ16,IVF64,PQ16", "IDMap,Flat"],
)
def test_invalid_specs_name_the_valid_forms(text: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert repr(text) in message
    for form in VALID_FORMS:
        assert form in message, f"{form} missing from: {message}"
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2


@pytest.mark.parametrize("text", ["HNSW2", "HNSW512", "HNSW32,efConstruction=1"])
def test_out_of_range_specs_give_the_ranges(text: str) -> None:
    with pytest.raises(InvalidSpecError, match="M must be 4-256 and efConstruction 8-4096"):
        parse_spec(text)


def test_auto_switches_to_hnsw_at_the_threshold() -> None:
    auto = parse_spec("auto")
    assert auto.for_size(0).kind == "flat"
    assert auto.for_size(AUTO_HNSW_THRESHOLD - 1).kind == "flat"
    at = auto.for_size(AUTO_HNSW_THRESHOLD)
    assert (at.kind, at.m, at.ef_construction) == ("hnsw", 32, 128)
    assert at.text == "auto"  # still reported as the spec the user chose


def test_a_resolved_auto_spec_is_final() -> None:
    """A rebuild builds ``spec.for_size(n)`` with no vectors yet: it must stay HNSW."""
    resolved = parse_spec("auto").for_size(AUTO_HNSW_THRESHOLD)
    assert resolved.for_size(0) == resolved
    assert FaissIndex.build(resolved, DIM).spec.kind == "hnsw"


@pytest.mark.parametrize("text", ["Flat", "HNSW16"])
def test_explicit_specs_ignore_the_size(text: str) -> None:
    spec = parse_spec(text)
    assert spec.for_size(0) == spec.for_size(10 * AUTO_HNSW_THRESHOLD) == spec


def test_build_resolves_auto_by_the_number_of_vectors() -> None:
    small = make_dataset(n=500, n_queries=1)
    index = FaissIndex.build(parse_spec("auto"), DIM, small.ids, small.vectors)
    assert index.spec.kind == "flat" and index.ntotal == 500
    assert FaissIndex.build(parse_spec("HNSW16"), DIM).spec.kind == "hnsw"


# ---------------------------------------------------------------------------------------------
# Search quality against brute force
# ---------------------------------------------------------------------------------------------


def test_flat_returns_the_exact_top_k(data: Dataset, flat: FaissIndex) -> None:
    scores, found = flat.search(data.queries, K)
    assert scores.shape == found.shape == (len(data.queries), K)
    assert (found >= 0).all()
    assert recall_at_k(data, found) == 1.0
    assert_scores_are_true_inner_products(data, scores, found)


def test_hnsw_recall_at_10(data: Dataset, hnsw: FaissIndex) -> None:
    assert hnsw.spec.kind == "hnsw"
    scores, found = hnsw.search(data.queries, K)
    assert found.shape == (len(data.queries), K) and (found >= 0).all()
    assert recall_at_k(data, found) >= 0.95
    assert_scores_are_true_inner_products(data, scores, found)


def test_ef_search_applies_to_one_call_only(data: Dataset, hnsw: FaissIndex) -> None:
    before_scores, before = hnsw.search(data.queries, K)
    low = recall_at_k(data, hnsw.search(data.queries, K, ef_search=K)[1])
    high = recall_at_k(data, hnsw.search(data.queries, K, ef_search=256)[1])
    assert low < high, "ef_search has no effect"  # ~0.91 vs 1.0 on this data
    assert high >= 0.99
    after_scores, after = hnsw.search(data.queries, K)
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after_scores, before_scores)


def test_ef_search_below_k_still_returns_k_results(data: Dataset, hnsw: FaissIndex) -> None:
    _, found = hnsw.search(data.queries, 50, ef_search=4)  # efSearch is raised to k
    assert found.shape == (len(data.queries), 50) and (found >= 0).all()


# ---------------------------------------------------------------------------------------------
# Excluding ids (removed images) during the search
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_excluded_ids_never_come_back(kind: str, data: Dataset, flat: FaissIndex,
                                      hnsw: FaissIndex) -> None:
    index = flat if kind == "flat" else hnsw
    queries = data.queries[:50]
    top = index.search(queries, 5)[1]
    every_other = data.ids[::2]  # half the collection removed, and every query's 5 best
    exclude = set(top.ravel().tolist()) | set(every_other.tolist())
    scores, found = index.search(queries, K, exclude=exclude)
    assert found.shape == (len(queries), K) and (found >= 0).all(), "k live results expected"
    assert not set(found.ravel().tolist()) & exclude
    subset = Dataset(data.ids, data.vectors, queries)
    expected_recall = 1.0 if kind == "flat" else 0.95
    assert recall_at_k(subset, found, exclude=exclude) >= expected_recall
    assert_scores_are_true_inner_products(subset, scores, found)


def test_excluding_unknown_ids_changes_nothing(small_index: tuple[FaissIndex, Dataset]) -> None:
    index, small = small_index
    plain = index.search(small.queries, K)
    unknown = index.search(small.queries, K, exclude={-5, 0, 1, 10**12})
    np.testing.assert_array_equal(plain[1], unknown[1])


def test_excluding_almost_everything_pads_with_minus_one() -> None:
    """Results are never wider than ntotal; slots that no live vector can fill hold id -1."""
    small = make_dataset(n=5, n_queries=2)
    index = FaissIndex.build(parse_spec("Flat"), DIM, small.ids, small.vectors)
    removed = set(small.ids[:3].tolist())
    _, found = index.search(small.queries, K, exclude=removed)
    assert found.shape == (2, 5)
    for row in found:
        assert set(row[row >= 0].tolist()) == set(small.ids[3:].tolist())
        assert (row[2:] == -1).all()


# ---------------------------------------------------------------------------------------------
# Small and empty indexes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Flat", "HNSW32"])
def test_k_larger_than_ntotal_returns_every_vector_once(text: str) -> None:
    """Asking for more results than vectors returns ntotal columns (no -1 padding), best first."""
    small = make_dataset(n=5, n_queries=3)
    index = FaissIndex.build(parse_spec(text), DIM, small.ids, small.vectors)
    scores, found = index.search(small.queries, 100)
    assert found.shape == scores.shape == (3, 5)
    for row in found:
        assert sorted(row.tolist()) == sorted(small.ids.tolist())
    assert_scores_are_true_inner_products(small, scores, found)


@pytest.mark.parametrize("text", ["Flat", "HNSW32", "auto"])
def test_search_on_an_empty_index_finds_nothing(text: str) -> None:
    """An empty index answers each query with a single slot holding id -1 (no error)."""
    index = FaissIndex.build(parse_spec(text), DIM)
    assert index.ntotal == 0
    queries = make_dataset(n=1, n_queries=4).queries
    scores, found = index.search(queries, K)
    assert found.shape == scores.shape == (4, 1)
    assert (found == -1).all()


def test_ids_and_max_id() -> None:
    index = FaissIndex.build(parse_spec("Flat"), DIM)
    assert index.ids().dtype == np.int64 and len(index.ids()) == 0
    assert index.max_id() == 0
    vectors = make_dataset(n=4, n_queries=1).vectors
    index.add(np.array([5, 42, 7]), vectors[:3])
    assert index.ids().tolist() == [5, 42, 7]  # insertion order
    assert index.max_id() == 42 and index.ntotal == 3
    index.add(np.array([100]), vectors[3:])
    assert index.max_id() == 100 and index.ntotal == 4
    _, found = index.search(vectors[3:], 1)
    assert found[0, 0] == 100


# ---------------------------------------------------------------------------------------------
# Save and load
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(small_index: tuple[FaissIndex, Dataset], tmp_path: Path) -> None:
    index, small = small_index
    path = tmp_path / "vectors.faiss"
    index.save(path)
    loaded = FaissIndex.load(path, parse_spec("auto"))  # the kind comes from the file
    assert loaded.spec.kind == index.spec.kind
    assert loaded.ntotal == index.ntotal == len(small.ids)
    np.testing.assert_array_equal(loaded.ids(), small.ids)
    assert loaded.max_id() == int(small.ids.max())
    for kwargs in ({}, {"exclude": set(small.ids[:100].tolist())}):
        expected = index.search(small.queries, K, **kwargs)
        got = loaded.search(small.queries, K, **kwargs)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_save_replaces_the_target_atomically(tmp_path: Path) -> None:
    path = tmp_path / "vectors.faiss"
    path.write_bytes(b"an older, broken index")
    small = make_dataset(n=300, n_queries=1)
    index = FaissIndex.build(parse_spec("Flat"), DIM, small.ids[:200], small.vectors[:200])
    index.save(path)
    assert FaissIndex.load(path, parse_spec("Flat")).ntotal == 200
    index.add(small.ids[200:], small.vectors[200:])
    index.save(path)
    assert FaissIndex.load(path, parse_spec("Flat")).ntotal == 300
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.faiss"]  # no temporary left over


def test_saving_into_a_missing_folder_fails_without_leaving_files(tmp_path: Path) -> None:
    index = FaissIndex.build(parse_spec("Flat"), DIM)
    with pytest.raises(OSError):  # the temporary file cannot be made
        index.save(tmp_path / "missing" / "vectors.faiss")
    assert list(tmp_path.iterdir()) == []


def _real_index_bytes(tmp_path: Path) -> bytes:
    small = make_dataset(n=50, n_queries=1)
    path = tmp_path / "real.faiss"
    FaissIndex.build(parse_spec("HNSW16"), DIM, small.ids, small.vectors).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated"])
def test_loading_an_unreadable_file_is_a_corrupt_collection(content: str, tmp_path: Path) -> None:
    payload = {
        "garbage": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "empty": b"",
        "truncated": _real_index_bytes(tmp_path)[:3000],
    }[content]
    path = tmp_path / "vectors.faiss"
    path.write_bytes(payload)
    with pytest.raises(CorruptCollectionError, match="unreadable.*lookalike rebuild"):
        FaissIndex.load(path, parse_spec("auto"))


def test_loading_a_foreign_faiss_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vectors.faiss"
    faiss.write_index(faiss.IndexFlatIP(DIM), str(path))  # a valid index without lookalike's ids
    with pytest.raises(CorruptCollectionError, match="not written by lookalike"):
        FaissIndex.load(path, parse_spec("auto"))


# ---------------------------------------------------------------------------------------------
# Every kind: recall against brute force, per-call knobs, exclusion, save/load, size
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """An index spec and what it must achieve on ``data`` (20,000 clustered vectors)."""

    spec: str
    knob: str | None = None  # the per-call search knob that trades speed for recall
    low: int = 0
    high: int = 0
    floor: float = 1.0  # recall@10 at knob=high (and, excluding ids, at most 0.05 less)
    score_error: float = 0.0  # how far quantised scores may be from the true inner products


KINDS = [
    Kind("Flat"),
    Kind("HNSW32", "ef_search", K, 256, 0.99),
    Kind("HNSW32,SQ8", "ef_search", K, 256, 0.97, score_error=0.02),
    Kind("IVF64,Flat", "nprobe", 1, 64, 1.0),  # nprobe = nlist visits every vector
    Kind("IVF64,PQ16", "nprobe", 1, 64, 0.7, score_error=0.25),  # 16 bytes for 64 floats
    Kind("IVF64,PQ32x4fs,RFlat", "nprobe", 1, 64, 0.97),
    Kind("ScaNN", "leaves", 1, 141, 0.99),  # √20,000 = 141 leaves
]
Built = Callable[[str], FaissIndex | ScannIndex]
KIND_PARAMS = [pytest.param(kind, id=kind.spec, marks=[needs_scann] if "ScaNN" in kind.spec
                            else []) for kind in KINDS]
@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_every_kind_builds_what_its_spec_says(kind: Kind, data: Dataset, built: Built) -> None:
    index = built(kind.spec)
    spec = parse_spec(kind.spec)
    assert index.spec.kind == spec.kind and index.spec.quantizer == spec.quantizer
    assert isinstance(index, ScannIndex if spec.kind == "scann" else FaissIndex)
    assert index.ntotal == len(data.ids) and index.dim == DIM
    np.testing.assert_array_equal(np.sort(index.ids()), data.ids)
    assert index.max_id() == int(data.ids.max())


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_every_kind_meets_its_recall_floor(kind: Kind, data: Dataset, built: Built) -> None:
    index = built(kind.spec)
    knobs = {kind.knob: kind.high} if kind.knob else {}
    scores, found = index.search(data.queries, K, **knobs)
    assert found.shape == scores.shape == (len(data.queries), K) and (found >= 0).all()
    assert recall_at_k(data, found) >= kind.floor
    if not kind.score_error:
        assert_scores_are_true_inner_products(data, scores, found)
    else:
        exact = data.exact_scores()[np.arange(len(found))[:, None], data.row(found)]
        assert np.abs(scores - exact).max() <= kind.score_error
        assert np.abs(scores - exact).mean() <= kind.score_error / 4
        assert (np.diff(scores, axis=1) <= 1e-6).all(), "results are not best first"


@pytest.mark.parametrize("kind", [p for p in KIND_PARAMS if p.values[0].knob])
def test_knobs_trade_speed_for_recall_per_call(kind: Kind, data: Dataset, built: Built) -> None:
    index = built(kind.spec)
    before = index.search(data.queries, K)
    low = recall_at_k(data, index.search(data.queries, K, **{kind.knob: kind.low})[1])
    high = recall_at_k(data, index.search(data.queries, K, **{kind.knob: kind.high})[1])
    assert low < high, f"{kind.knob} has no effect"
    after = index.search(data.queries, K)  # the knob did not stay on the shared index
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])


@pytest.mark.parametrize("kind", [p for p in KIND_PARAMS if "RFlat" in p.id or "ScaNN" in p.id])
def test_more_candidates_reranked_means_recall_not_lower(kind: Kind, data: Dataset,
                                                         built: Built) -> None:
    index = built(kind.spec)
    at = {kind.knob: kind.high}
    recalls = [recall_at_k(data, index.search(data.queries, K, k_factor=f, **at)[1])
               for f in (1, 4, 16)]
    assert recalls == sorted(recalls) and recalls[0] < recalls[-1], recalls


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_knobs_of_other_kinds_are_ignored(kind: Kind, data: Dataset, built: Built) -> None:
    index = built(kind.spec)
    others = {"ef_search": 7, "nprobe": 3, "leaves": 2}
    others.pop(kind.knob or "", None)
    plain = index.search(data.queries[:20], K)
    np.testing.assert_array_equal(index.search(data.queries[:20], K, **others)[1], plain[1])


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_every_kind_excludes_ids_and_still_returns_k(kind: Kind, data: Dataset,
                                                     built: Built) -> None:
    index = built(kind.spec)
    queries = data.queries[:50]
    top = index.search(queries, 5)[1]
    every_other = data.ids[::2]  # half the collection removed, and every query's 5 best
    exclude = set(top.ravel().tolist()) | set(every_other.tolist())
    knobs = {kind.knob: kind.high} if kind.knob else {}
    for k, batch in ((K, queries), (1, queries), (K, queries[:1])):  # and the one-query path
        _, found = index.search(batch, k, exclude=exclude, **knobs)
        assert found.shape == (len(batch), k) and (found >= 0).all(), "k live results expected"
        assert not set(found.ravel().tolist()) & exclude
    _, found = index.search(queries, K, exclude=exclude, **knobs)
    subset = Dataset(data.ids, data.vectors, queries)
    assert recall_at_k(subset, found, exclude=exclude) >= kind.floor - 0.05


@pytest.mark.parametrize("kind", KIND_PARAMS)
def test_every_kind_round_trips_through_a_file(kind: Kind, data: Dataset,
                                               tmp_path: Path, built: Built) -> None:
    index = built(kind.spec)
    path = tmp_path / "main.index"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["main.index"]  # no temporaries left over
    loaded = load_index(path, parse_spec(kind.spec))
    assert type(loaded) is type(index) and loaded.spec == index.spec
    assert loaded.ntotal == index.ntotal and loaded.dim == DIM
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    removed = set(data.ids[:2000].tolist())
    for kwargs in ({}, {"exclude": removed}, {kind.knob: kind.low} if kind.knob else {}):
        expected = index.search(data.queries, K, **kwargs)
        got = loaded.search(data.queries, K, **kwargs)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], atol=1e-6)


def test_quantised_kinds_take_less_memory(data: Dataset, built: Built) -> None:
    size = {k.spec: built(k.spec).memory_bytes / len(data.ids) for k in KINDS if "ScaNN"
            not in k.spec}
    float32 = DIM * 4
    assert float32 <= size["Flat"] <= float32 + 16  # vectors and ids
    assert size["HNSW32,SQ8"] < size["HNSW32"] - 0.7 * float32  # a byte a dimension, not four
    assert size["IVF64,PQ16"] < 0.2 * size["Flat"]  # 16-byte codes and ids
    assert size["IVF64,PQ32x4fs,RFlat"] > size["Flat"]  # codes plus the exact vectors


# ---------------------------------------------------------------------------------------------
# The index factory: backends by spec, Flat while too small to train
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["HNSW32,SQ8", "IVF64,Flat", "IVF4,PQ8", "IVF64,PQ8x4fs,RFlat",
                                  "ScaNN", "ScaNN,leaves=100"])
def test_too_few_vectors_to_train_builds_exact_flat(text: str, tmp_path: Path) -> None:
    """No ScaNN needed either: a small ScaNN collection is a Flat one."""
    small = make_dataset(n=500, n_queries=10)
    index = build_index(parse_spec(text), DIM, small.ids, small.vectors)
    assert isinstance(index, FaissIndex) and index.spec.kind == "flat"
    attempted = parse_spec(text).for_size(500).fallback
    assert attempted is not None and attempted.describe in index.spec.describe
    scores, found = index.search(small.queries, K, exclude={int(small.ids[0])})
    assert recall_at_k(small, found, exclude={int(small.ids[0])}) == 1.0
    assert_scores_are_true_inner_products(small, scores, found)
    index.save(tmp_path / "main.index")
    loaded = load_index(tmp_path / "main.index", parse_spec(text))
    assert loaded.spec.kind == "flat" and loaded.spec.describe.startswith("Flat (")
    assert build_index(parse_spec(text), DIM).spec.kind == "flat"  # empty: nothing to train on


def test_a_training_sample_decides_and_trains(data: Dataset) -> None:
    spec = parse_spec("IVF64,Flat")
    too_small = build_index(spec, DIM, data.ids, data.vectors, train=data.vectors[:1000])
    assert too_small.spec.kind == "flat"
    empty = build_index(spec, DIM, train=data.vectors[:5000])  # trained, vectors added later
    assert empty.spec.kind == "ivf" and empty.ntotal == 0
    empty.add(data.ids, data.vectors)
    found = empty.search(data.queries, K, nprobe=64)[1]
    assert recall_at_k(data, found) == 1.0


def test_ivf_visits_more_cells_when_the_visited_ones_run_dry() -> None:
    """One cell of a few vectors cannot fill k: more cells are searched, for that query only."""
    small = make_dataset(n=5000, n_queries=20)
    index = build_index(parse_spec("IVF128,Flat"), DIM, small.ids, small.vectors)
    _, found = index.search(small.queries, 100, nprobe=1)
    assert (found >= 0).all()


def test_scann_is_an_optional_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scann", None)
    monkeypatch.setitem(sys.modules, "scann.scann_ops.py", None)
    small = make_dataset(n=2000, n_queries=1)
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'lookalike[scann]'")):
        build_index(parse_spec("ScaNN"), DIM, small.ids, small.vectors)


@needs_scann
def test_scann_fetches_more_until_k_survive_the_exclusions(data: Dataset, built: Built) -> None:
    index = built("ScaNN")
    queries = data.queries[:10]
    # All but 30 vectors removed: the live ones sit in leaves the query would not search.
    keep = set(data.ids[::700].tolist())
    exclude = set(data.ids.tolist()) - keep
    _, found = index.search(queries, K, leaves=1, exclude=exclude)
    assert (found >= 0).all() and set(found.ravel().tolist()) <= keep
    assert recall_at_k(Dataset(data.ids, data.vectors, queries), found, exclude=exclude) >= 0.95
    _, everything = index.search(queries, 100, exclude=exclude)  # fewer live than k: -1 pads
    assert ((everything >= 0).sum(axis=1) == len(keep)).all()


@needs_scann
def test_scann_cannot_grow_in_place(data: Dataset, built: Built) -> None:
    with pytest.raises(NotImplementedError, match="delta until the next compaction"):
        built("ScaNN").add(np.array([1]), data.vectors[:1])


@needs_scann
def test_a_damaged_scann_file_is_a_corrupt_collection(tmp_path: Path, built: Built) -> None:
    path = tmp_path / "main.index"
    built("ScaNN").save(path)
    path.write_bytes(path.read_bytes()[:20_000])
    with pytest.raises(CorruptCollectionError, match="unreadable.*lookalike rebuild"):
        load_index(path, parse_spec("ScaNN"))


# ---------------------------------------------------------------------------------------------
# Compaction through a collection: trained on a sample of the store, tombstones, verify
# ---------------------------------------------------------------------------------------------


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    basis = np.random.default_rng(0).standard_normal((24, dim)).astype(np.float32)
    centres = np.random.default_rng(1).standard_normal((30, 24)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = (centres[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, 24))) @ basis
    return unit(x)


def _write(col: object, vectors: np.ndarray, tag: str) -> list[int]:
    from lookalike.storage import NewImage

    return col.store.write(  # type: ignore[attr-defined]
        NewImage(uri=f"/synthetic/{tag}{i}.jpg", size=1, mtime_ns=1, content_hash=f"{tag}{i}",
                 vector=v) for i, v in enumerate(vectors))


@pytest.mark.parametrize(
    ("text", "kind", "floor"),
    [("HNSW16,SQ8", "hnsw", 0.9), ("IVF16,PQ160x4fs,RFlat", "ivf", 0.9),
     pytest.param("ScaNN", "scann", 0.9, marks=needs_scann)],
)
def test_compaction_builds_every_kind_from_the_store(text: str, kind: str, floor: float,
                                                     tmp_path: Path) -> None:
    from lookalike import Collection

    col = Collection.create(tmp_path / "col", index=text)
    dim = col.dim
    _write(col, _clustered(2000, dim, seed=2), "a")
    report = col.compact()
    assert report is not None and report.main_vectors == 2000
    assert report.spec == col.info().index_kind == col.live.main_kind
    assert col.live._main.spec.kind == kind  # built, not the Flat fallback
    removed = list(range(1, 101))
    col.remove(removed)
    added = _write(col, _clustered(50, dim, seed=3), "b")  # in the delta
    queries = _clustered(20, dim, seed=4)

    def top(c: Collection) -> list[list[int]]:
        return [[h.image_id for h in c.search_vector(q, k=K, qe=0)] for q in queries]

    ids, vectors = map(np.concatenate, zip(*col.store.iter_vectors(), strict=True))
    exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :K]]
    found = top(col)
    assert all(len(row) == K and not set(row) & set(removed) for row in found)
    assert np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)]) >= floor
    assert col.search_vector(_clustered(50, dim, seed=3)[7], k=1)[0].image_id == added[7]
    assert col.verify().ok, col.verify().problems
    assert top(Collection.open(col.path)) == found  # a reader loads main.index from disk
    again = col.compact()
    assert again is not None and again.dropped_tombstones == 100 and again.main_vectors == 1950


def test_a_trainable_spec_stays_flat_until_the_store_can_train_it(tmp_path: Path) -> None:
    from lookalike import Collection

    col = Collection.create(tmp_path / "col", index="IVF16,Flat")
    _write(col, _clustered(300, col.dim, seed=5), "a")
    col.compact()
    assert col.info().index_kind == "Flat (IVF16,Flat needs 624 vectors to train)"
    assert not col.live.needs_compaction()
    _write(col, _clustered(400, col.dim, seed=6), "b")
    col.live.refresh()
    assert col.live.needs_compaction()  # enough vectors to train on now
    assert col.compact().spec == "IVF16,Flat"
    assert not col.live.needs_compaction()
