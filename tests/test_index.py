"""The Faiss index against exact ground truth: seeded synthetic unit vectors, numpy brute force."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.errors import CorruptCollectionError, InvalidSpecError, UsageError
from lookalike.index import AUTO_HNSW_THRESHOLD, FaissIndex, IndexSpec, parse_spec

DIM = 64
K = 10
TIE = 1e-6  # a result counts as correct if it scores within TIE of the exact k-th best score
VALID_FORMS = ("'auto'", "'Flat'", "'HNSW<M>[,efConstruction=<n>]'")


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
def hnsw(data: Dataset) -> FaissIndex:
    return FaissIndex.build(parse_spec("HNSW32"), DIM, data.ids, data.vectors)


@pytest.fixture(scope="module")
def flat(data: Dataset) -> FaissIndex:
    return FaissIndex.build(parse_spec("Flat"), DIM, data.ids, data.vectors)


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
        ("HNSW32", IndexSpec("HNSW32,efConstruction=64", "hnsw", 32, 64)),
        ("hnsw", IndexSpec("HNSW32,efConstruction=64", "hnsw", 32, 64)),
        ("HNSW16,efConstruction=100", IndexSpec("HNSW16,efConstruction=100", "hnsw", 16, 100)),
        (" HNSW16, efConstruction = 100\t", IndexSpec("HNSW16,efConstruction=100", "hnsw", 16,
                                                      100)),
    ],
)
def test_parse_spec_accepts_the_documented_forms(text: str, expected: IndexSpec) -> None:
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(spec.text) == spec  # the canonical text parses back to the same spec


def test_spec_describe() -> None:
    assert parse_spec("flat").describe == "Flat"
    assert parse_spec("HNSW16,efConstruction=100").describe == "HNSW16,efConstruction=100"
    assert parse_spec("auto").for_size(AUTO_HNSW_THRESHOLD).describe == "HNSW32,efConstruction=64"


@pytest.mark.parametrize(
    "text",
    ["IVF", "IVF1024,Flat", "HNSW2", "HNSW32,efConstruction=1", "HNSW512", "", "   ",
     "HNSW32,ef=10", "Flat,HNSW32", "HNSWx"],
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
    assert (at.kind, at.m, at.ef_construction) == ("hnsw", 32, 64)
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
    with pytest.raises(RuntimeError):  # faiss cannot open the temporary file
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
