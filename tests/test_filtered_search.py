"""Searching within a slice: every plan returns what exact filtered search returns, results
stay diverse, and hits carry labels by the model's calibration.

The ground truth is computed here with numpy over the images that pass (by the expression's
own evaluation of each image's fields): the store's SQL is never its own referee.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY
from lookalike import Collection
from lookalike.collection import slices
from lookalike.errors import UsageError
from lookalike.index.tuning import clustered_vectors
from lookalike.storage import NewImage
from lookalike.thresholds import thresholds_for
from lookalike.where import Where, WhereError
from random_filters import random_expression

N, DIM, K = 2000, 64, 10
ALBUMS = [f"a{i}" for i in range(30)]


def _metadata(i: int, rng: random.Random) -> dict:
    meta: dict = {"s2": i % 2, "s10": f"v{i % 10}", "s100": i % 100, "s1000": i % 1000,
                  "album": ALBUMS[(i // 7) % len(ALBUMS)], "price": round(rng.uniform(0, 50), 2)}
    if rng.random() < 0.7:
        meta["tags"] = rng.sample(["red", "blue", "sea", "cat", "night"], rng.randint(1, 3))
    if rng.random() < 0.5:
        meta["day"] = f"2021-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if rng.random() < 0.3:
        meta["sold"] = rng.random() < 0.5
    return meta


def _build(folder: Path, index: str) -> tuple[np.ndarray, list[dict]]:
    vectors = clustered_vectors(N, DIM, seed=5, clusters=30, intrinsic=16)
    rng = random.Random(1)
    meta = [_metadata(i, rng) for i in range(N)]
    with Collection.create(folder, model=TINY, index=index) as col:
        col.store.write([NewImage(f"/photos/{m['album']}/img{i}.jpg", 1000 + i, 1, f"h{i}", 64,
                                  48, vectors[i], metadata=json.dumps(m))
                         for i, m in enumerate(meta)])
        col.compact()
    return vectors, meta


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("sliced")
    vectors, meta = _build(folder / "hnsw", "HNSW16")
    _build(folder / "flat", "Flat")
    with Collection.open(folder / "flat") as col:  # the same fields in both
        fields = col.store.fields(list(range(1, N + 1)))
    return {"folder": folder, "vectors": vectors, "meta": meta, "fields": fields}


@pytest.fixture
def hnsw(built: dict) -> Iterator[Collection]:
    with Collection.open(built["folder"] / "hnsw") as col:
        yield col


def _queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = vectors[rng.integers(0, len(vectors), n)] + 0.3 * rng.standard_normal(
        (n, vectors.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _exact(built: dict, where: Where, query: np.ndarray, k: int = K
           ) -> tuple[list[int], float]:
    """The exact filtered top k (ids are rows + 1) and the k-th score."""
    fields, vectors = built["fields"], built["vectors"]
    passing = np.asarray([i for i in range(1, N + 1) if where.matches(fields.get(i, {}))])
    if not len(passing):
        return [], 1.0
    scores = vectors[passing - 1] @ query
    order = np.argsort(-scores)[:k]
    return passing[order].tolist(), float(scores[order[-1]])


def _recall(found: list[int], truth: list[int], vectors: np.ndarray, query: np.ndarray,
            kth: float) -> float:
    """Found ids scoring at least the k-th best (ties count), over the number expected."""
    if not truth:
        return 1.0 if not found else 0.0
    right = sum(1 for i in found if float(vectors[i - 1] @ query) >= kth - 1e-5)
    return right / len(truth)


@pytest.mark.parametrize("expression, strategy", [
    ("exists s2", "post-filter"),            # 100 %
    ("s2 = 1", "post-filter"),               # 50 %
    ('s10 = "v3"', "post-filter"),           # 10 %
    ("s100 = 42", "exact"),                  # 1 %
    ("s1000 = 7", "exact"),                  # 0.1 %
    ("s1000 = 7 and s2 = 0", "exact"),       # none
])
def test_each_plan_returns_exact_filtered_search(hnsw: Collection, built: dict,
                                                 expression: str, strategy: str) -> None:
    where = Where.parse(expression)
    assert hnsw.search_plan(where).strategy == strategy
    recalls = []
    for query in _queries(built["vectors"], 20, seed=len(expression)):
        hits = hnsw.search_vector(query, K, where=where, qe=0)
        fields = hnsw.store.fields([h.image_id for h in hits])
        assert all(where.matches(fields[h.image_id]) for h in hits)
        truth, kth = _exact(built, where, query)
        assert len(hits) == len(truth)
        recalls.append(_recall([h.image_id for h in hits], truth, built["vectors"], query, kth))
    assert np.mean(recalls) >= (1.0 if strategy == "exact" else 0.95)


def test_the_graph_search_among_allowed_ids_and_a_misjudged_share(
        hnsw: Collection, built: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-filter too big to compare exactly searches the graph among its ids; a filter the
    sample calls common but is rare falls back from post-filtering to the store's list."""
    monkeypatch.setattr(slices, "EXACT_BUDGET", 0)
    monkeypatch.setattr(slices, "MAX_FETCH", 200)  # well under the collection's size
    where = Where.parse("s100 in [1, 2, 3]")
    assert hnsw.search_plan(where).strategy == "pre-filter"
    rare = Where.parse("s1000 = 3")
    monkeypatch.setattr(slices.Slices, "share", lambda self, where: 0.9)
    assert hnsw.search_plan(rare).strategy == "post-filter"
    for where in (Where.parse("s100 in [1, 2, 3]"), rare):
        passing = hnsw.store.matching(where).tolist()
        recalls = []
        for query in _queries(built["vectors"], 15, seed=3):
            truth, kth = _exact(built, where, query)
            found = [h.image_id for h in hnsw.search_vector(query, K, where=where, qe=0)]
            assert len(found) == len(truth) and set(found) <= set(passing)
            recalls.append(_recall(found, truth, built["vectors"], query, kth))
        assert np.mean(recalls) >= 0.95, where


def test_every_result_passes_its_filter_and_equals_exact_filtered_search(built: dict) -> None:
    """Property: over random expressions of the whole grammar, a search on an exact index
    returns exactly the filtered top k, and every hit passes."""
    rng = random.Random(7)
    keys = ["s2", "s10", "s100", "s1000", "album", "price", "tags", "day", "sold", "name",
            "folder", "width", "missing"]
    texts = ["v3", "v7", "a1", "a12", "red", "sea", "img1.jpg", "2021-06", "2021-06-05"]
    numbers = [0, 1, 3, 7, 42, 12.5, 64, 99]
    patterns = ["a1*", "v?", "*.jpg", "/photos/a2*", "*e*"]
    queries = _queries(built["vectors"], 100, seed=11)
    with Collection.open(built["folder"] / "flat") as col:
        for query in queries:
            where = Where.parse(random_expression(rng, keys, texts, numbers, patterns))
            hits = col.search_vector(query, K, where=where, qe=0)
            truth, kth = _exact(built, where, query)
            fields = col.store.fields([h.image_id for h in hits])
            assert all(where.matches(fields[h.image_id]) for h in hits), where
            assert len(hits) == len(truth), where
            assert _recall([h.image_id for h in hits], truth, built["vectors"], query,
                           kth) == 1.0, where


def test_a_changed_field_is_searched_at_once(tmp_path: Path, built: dict) -> None:
    shutil.copytree(built["folder"] / "hnsw", tmp_path / "col")
    with Collection.open(tmp_path / "col") as col:
        query = built["vectors"][0]
        assert col.search_vector(query, K, where='album = "new"', qe=0) == []
        col.tag([1, 2], {"album": "new"})
        hits = col.search_vector(query, K, where='album = "new"', qe=0)
        assert [h.image_id for h in hits] == [1, 2]


def test_bad_expressions_are_usage_errors_that_never_reach_sql(hnsw: Collection) -> None:
    for bad in ["album =", "album = = 1", "(album = a", "album ! a", "'; DROP TABLE images"]:
        with pytest.raises(WhereError, match="Bad filter expression"):
            hnsw.search_vector(np.ones(DIM, np.float32) / 8, K, where=bad)
    # Text that looks like SQL is a value like any other, bound as a parameter.
    hits = hnsw.search_vector(np.ones(DIM, np.float32) / 8, K,
                              where='album = "a1\'; DROP TABLE images; --"')
    assert hits == [] and hnsw.store.counts()["active"] == N
    with pytest.raises(UsageError, match="max_per takes"):
        hnsw.search_vector(np.ones(DIM, np.float32) / 8, K, max_per="album")


def test_max_per_keeps_at_most_n_per_value(hnsw: Collection, built: dict) -> None:
    for query in _queries(built["vectors"], 5, seed=2):
        hits = hnsw.search_vector(query, K, max_per="album=1", qe=0)
        albums = [built["meta"][h.image_id - 1]["album"] for h in hits]
        assert len(hits) == K and len(set(albums)) == K
        two = hnsw.search_vector(query, K, max_per=("album", 2), where="s2 = 0", qe=0)
        albums = [built["meta"][h.image_id - 1]["album"] for h in two]
        assert len(two) == K and max(albums.count(a) for a in albums) <= 2
        assert all(built["meta"][h.image_id - 1]["s2"] == 0 for h in two)


def test_copies_collapse_into_the_best_hit_and_labels_follow_the_calibration(
        tmp_path: Path) -> None:
    """In a collection of the default model (vectors written directly), copies at cosines
    above the calibrated near threshold fold into the hit above them, and each hit's label is
    the calibration's: exact for the same bytes, copy, similar, or none."""
    model = "efficientnet-lite0-gem"
    thresholds = thresholds_for(model, verify=False)
    near, similar = thresholds.near.threshold, thresholds.similar.threshold
    dim = 1280
    base = clustered_vectors(400, dim, seed=9, clusters=40, intrinsic=48)
    rng = np.random.default_rng(0)

    def at_cosine(v: np.ndarray, cosine: float) -> np.ndarray:
        noise = rng.standard_normal(dim).astype(np.float32)
        noise -= (noise @ v) * v
        noise /= np.linalg.norm(noise)
        return (cosine * v + np.sqrt(1 - cosine ** 2) * noise).astype(np.float32)

    original = base[0]
    planted = {"same": (original, "h0"), "copy": (at_cosine(original, near + 0.03), "c1"),
               "copy2": (at_cosine(original, 0.995), "c2"),
               "look": (at_cosine(original, (near + similar) / 2), "l1")}
    with Collection.create(tmp_path / "col", model=model, index="Flat") as col:
        col.store.write([NewImage(f"/p/{i}.jpg", 1, 1, f"h{i}", 8, 8, v)
                         for i, v in enumerate(base)]
                        + [NewImage(f"/p/{name}.jpg", 1, 1, digest, 8, 8, v)
                           for name, (v, digest) in planted.items()])
        hits = col.search_vector(original, 6, qe=0, query_hash="h0")
        labels = {Path(h.uri).stem: h.match for h in hits}
        assert labels["0"] == labels["same"] == "exact"
        assert labels["copy"] == labels["copy2"] == "copy" and labels["look"] == "similar"
        for hit in hits:
            if hit.match not in ("exact", None):
                cosine = float(col.store.vector(hit.image_id) @ original)
                expected = "copy" if cosine >= near else "similar" if cosine >= similar else None
                assert hit.match == expected
        folded = col.search_vector(original, 3, qe=0, query_hash="h0", collapse=True)
        top = folded[0]
        assert {Path(c.uri).stem for c in top.copies} | {Path(top.uri).stem} == \
            {"0", "same", "copy", "copy2"}
        assert "look" in {Path(h.uri).stem for h in folded[1:]}  # a look-alike stays a hit
        assert len(folded) == 3 and all(not h.copies for h in folded[1:])


def test_labels_of_self_made_copies_follow_the_calibration(
        col: Collection, edited: list[tuple[str, Path, Path]], sample_dir: Path) -> None:
    """The real model on real photos and self-made copies: the original's bytes are exact,
    each edited copy's original gets the label its cosine earns, and other photos are never
    labelled copies of it."""
    thresholds = thresholds_for(col.model_name, verify=False)
    photo = sorted(sample_dir.glob("*.jpg"))[0]
    top = col.search(photo.read_bytes(), 3, qe=0)[0]
    assert top.uri == str(photo) and top.match == "exact"
    labels = []
    for edit, original, copy in edited:
        hits = col.search(copy, 5, qe=0)
        cosine = float(col.embed([copy])[0] @ col.store.vector(col.find(original)))
        expected = ("copy" if cosine >= thresholds.near.threshold
                    else "similar" if cosine >= thresholds.similar.threshold else None)
        mine = [h for h in hits if h.uri == str(original)]
        if mine:
            assert mine[0].match == expected, (edit, cosine)
            labels.append(expected)
        assert all(h.match in ("similar", None) for h in hits if h.uri != str(original)), edit
    assert labels.count("copy") >= 3  # the lighter edits (JPEG quality 15, colour) are copies
