"""Milvus as the vector index, against Milvus Lite (the embedded Milvus from PyPI): the spec, the
client, congruence with the Faiss backend, and a collection of the sample photos end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lookalike import Collection
from lookalike.errors import (
    CollectionExistsError,
    CollectionLockedError,
    CorruptCollectionError,
    IndexUnavailableError,
    InvalidSpecError,
    MissingDependencyError,
)
from lookalike.index import build_index, parse_spec
from lookalike.index.tuning import clustered_vectors
from lookalike.storage import NewImage
from test_cli import run

pytestmark = pytest.mark.milvus

# CI installs the milvus extra: there a missing package is a failure, not a skip.
MISSING = [m for m in ("pymilvus", "milvus_lite") if importlib.util.find_spec(m) is None]
needs_milvus = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("CI"),
    reason="the Milvus backend needs `pip install 'lookalike[milvus]'`",
)
DIM, K, TIE = 64, 10, 1e-5
N_BASE, N_QUERIES = 5_000, 200


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "canonical"), [
    ("milvus-lite", "milvus-lite:milvus.db/lookalike?index=HNSW&M=32&efConstruction=64"),
    ("milvus-lite:photos", "milvus-lite:milvus.db/photos?index=HNSW&M=32&efConstruction=64"),
    ("milvus-lite:idx/v.db", "milvus-lite:idx/v.db/lookalike?index=HNSW&M=32&efConstruction=64"),
    ("milvus-lite:/data/v.db/photos?index=ivf_flat&nlist=256",
     "milvus-lite:/data/v.db/photos?index=IVF_FLAT&nlist=256"),
    ("milvus://milvus.example:19531/media/photos?M=16&efConstruction=200",
     "milvus://milvus.example:19531/media/photos?index=HNSW&M=16&efConstruction=200"),
    ("milvus://10.0.0.5/photos?index=FLAT", "milvus://10.0.0.5:19530/photos?index=FLAT"),
])
def test_milvus_specs_parse_to_one_canonical_form(text: str, canonical: str) -> None:
    spec = parse_spec(text)
    assert spec.kind == "milvus" and spec.text == canonical
    assert parse_spec(spec.text) == spec  # what the manifest records reads back the same
    assert not spec.trainable and spec.for_size(10**6) == spec


def test_milvus_spec_fields_map_to_milvus_parameters() -> None:
    hnsw = parse_spec("milvus://db.local/photos?M=24&efConstruction=80")
    assert hnsw.milvus is not None and hnsw.milvus.index_type == "HNSW"
    assert hnsw.milvus.build_params(hnsw) == {"M": 24, "efConstruction": 80}
    assert (hnsw.milvus.host, hnsw.milvus.port, hnsw.milvus.database) == ("db.local", 19530, "")
    ivf = parse_spec("milvus-lite:photos?index=IVF_FLAT&nlist=64")
    assert ivf.milvus is not None and ivf.milvus.build_params(ivf) == {"nlist": 64}
    assert ivf.default_nprobe == 8 and ivf.milvus.is_lite and ivf.milvus.lite_file == "milvus.db"


@pytest.mark.parametrize(("text", "why"), [
    ("milvus://host:19530/", "name the collection"),
    ("milvus://host/a/b/c", "name the collection"),
    ("milvus://me:secret@host/photos", "LOOKALIKE_MILVUS_TOKEN"),
    ("milvus://host:99999/photos", "port"),
    ("milvus-lite:data/photos", "ends in .db"),
    ("milvus-lite:v.db/9photos", "not a Milvus name"),
    ("milvus://host/photos?index=IVF_PQ", "index must be one of HNSW, IVF_FLAT, FLAT"),
    ("milvus://host/photos?nlist=64", "index=HNSW takes M, efConstruction, not nlist"),
    ("milvus://host/photos?index=FLAT&M=16", "index=FLAT takes no parameters"),
    ("milvus://host/photos?M=2", "M must be 4-256"),
    ("milvus://host/photos?index=IVF_FLAT&nlist=0", "nlist must be 1-65536"),
    ("milvus://host/photos?M=many", "M must be a whole number"),
    ("milvus://host/photos?M=16&m=16", "M is given twice"),
])
def test_invalid_milvus_specs_say_why_and_show_the_forms(text: str, why: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert repr(text) in message and why in message
    assert "milvus://HOST[:PORT]/[DATABASE/]NAME" in message and "milvus-lite:" in message


def test_other_invalid_specs_mention_milvus() -> None:
    with pytest.raises(InvalidSpecError, match="milvus://HOST:PORT/NAME"):
        parse_spec("Milvus")


def test_missing_pymilvus_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.index.milvus_index import MilvusIndex

    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[milvus\]'"):
        MilvusIndex(parse_spec("milvus-lite"))


# ---------------------------------------------------------------------------------------------
# The client, on seeded clustered vectors with exact ground truth
# ---------------------------------------------------------------------------------------------


class Data:
    """Clustered unit vectors under sparse ids, and held-out queries with their exact top k."""

    def __init__(self) -> None:
        vectors = clustered_vectors(N_BASE + N_QUERIES, DIM, seed=3, clusters=20, intrinsic=32)
        self.base, self.queries = vectors[:N_BASE], vectors[N_BASE:]
        self.ids = np.arange(1, N_BASE + 1, dtype=np.int64) * 3  # not 0..n-1: real ids
        self.scores = self.queries @ self.base.T
        order = np.argsort(-self.scores, axis=1)[:, :K]
        self.truth = self.ids[order]
        self.kth = np.take_along_axis(self.scores, order, axis=1)[:, -1]

    def allowed(self, share: float, seed: int = 0) -> np.ndarray:
        """A seeded random ``share`` of the ids, ascending: a filter's passing images."""
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(self.ids, max(1, int(share * len(self.ids))), replace=False))

    def filtered_recall(self, ids: np.ndarray, allowed: np.ndarray) -> float:
        """Recall@k of the first len(ids) queries against exact search among ``allowed``
        (ties within TIE count as right); every found id must be allowed."""
        assert set(ids[ids >= 0].tolist()) <= set(allowed.tolist())
        position = {int(i): p for p, i in enumerate(self.ids)}
        scores = self.scores[:len(ids), [position[int(i)] for i in allowed]]
        kth = np.sort(scores, axis=1)[:, ::-1][:, min(K, len(allowed)) - 1]
        hits = sum(1 for q, row in enumerate(ids) for i in row
                   if i >= 0 and self.scores[q, position[int(i)]] >= kth[q] - TIE)
        return hits / (len(ids) * min(K, len(allowed)))

    def recall(self, ids: np.ndarray) -> float:
        """Recall@k, a found id counting as right if it scores within TIE of the k-th best."""
        position = {int(i): p for p, i in enumerate(self.ids)}
        hits = 0
        for q, row in enumerate(ids):
            hits += sum(1 for i in row if i >= 0
                        and self.scores[q, position[int(i)]] >= self.kth[q] - TIE)
        return hits / ids.size


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory, data: Data):
    """Milvus Lite collections of the data, one per index type, flushed and indexed."""
    from lookalike.index.milvus_index import MilvusIndex

    folder = tmp_path_factory.mktemp("milvus")
    indexes = {}
    for name, params in [("flat", "index=FLAT"), ("hnsw", "M=8&efConstruction=40"),
                         ("ivf", "index=IVF_FLAT&nlist=128")]:
        index = MilvusIndex(parse_spec(f"milvus-lite:vectors.db/{name}?{params}"), base=folder)
        index.create(DIM)
        index.add(data.ids, data.base, replace=False)
        index.flush()
        index.wait_indexed()
        indexes[name] = index
    yield indexes
    for index in indexes.values():
        index.close()


@needs_milvus
@pytest.mark.parametrize("share", [0.005, 0.1, 0.5])
def test_an_id_filter_gives_exact_filtered_search_in_milvus_and_faiss(
        lite: dict, data: Data, share: float) -> None:
    allowed = data.allowed(share)
    exact = share < 0.05  # what the searcher asks for a set this small (lookalike.collection)
    for name in ("flat", "hnsw", "ivf"):
        found = lite[name].search(data.queries, K, allowed=allowed, exact=exact,
                                  ef_search=64)[1]
        floor = 1.0 if name == "flat" or exact else 0.9
        assert data.filtered_recall(found, allowed) >= floor, (name, exact)
    for spec, exact in [("HNSW8,efConstruction=40", True), ("HNSW8,efConstruction=40", False),
                        ("IVF64,Flat", True), ("Flat", False)]:
        faiss_index = build_index(parse_spec(spec), DIM, data.ids, data.base)
        found = faiss_index.search(data.queries, K, allowed=allowed, exact=exact,
                                   ef_search=max(64, int(K / share)))[1]
        assert data.filtered_recall(found, allowed) >= (1.0 if exact else 0.9), (spec, exact)


@needs_milvus
def test_flat_gives_the_same_top_k_as_faiss_flat(lite: dict, data: Data) -> None:
    faiss_flat = build_index(parse_spec("Flat"), DIM, data.ids, data.base)
    m_scores, m_ids = lite["flat"].search(data.queries, K)
    f_scores, f_ids = faiss_flat.search(data.queries, K)
    assert data.recall(m_ids) == 1.0 and data.recall(f_ids) == 1.0
    np.testing.assert_allclose(m_scores, f_scores, atol=TIE)
    assert np.mean(m_ids == f_ids) > 0.99  # equal but for the order of exact ties


@needs_milvus
@pytest.mark.parametrize("ef", [10, 20, 40])
def test_hnsw_recall_matches_faiss_hnsw(lite: dict, data: Data, ef: int) -> None:
    faiss_hnsw = build_index(parse_spec("HNSW8,efConstruction=40"), DIM, data.ids, data.base)
    milvus = data.recall(lite["hnsw"].search(data.queries, K, ef_search=ef)[1])
    faiss = data.recall(faiss_hnsw.search(data.queries, K, ef_search=ef)[1])
    assert abs(milvus - faiss) <= 0.02, (milvus, faiss)


@needs_milvus
@pytest.mark.parametrize("nprobe", [1, 4])
def test_ivf_flat_recall_matches_faiss_ivf(lite: dict, data: Data, nprobe: int) -> None:
    faiss_ivf = build_index(parse_spec("IVF128,Flat"), DIM, data.ids, data.base)
    milvus = data.recall(lite["ivf"].search(data.queries, K, nprobe=nprobe)[1])
    faiss = data.recall(faiss_ivf.search(data.queries, K, nprobe=nprobe)[1])
    assert abs(milvus - faiss) <= 0.02, (milvus, faiss)


@needs_milvus
def test_search_parameters_apply_to_one_call_only(lite: dict, data: Data) -> None:
    hnsw, ivf = lite["hnsw"], lite["ivf"]
    narrow = data.recall(hnsw.search(data.queries, K, ef_search=10)[1])
    wide = data.recall(hnsw.search(data.queries, K, ef_search=200)[1])
    assert narrow < wide and wide > 0.99
    assert data.recall(hnsw.search(data.queries, K, ef_search=10)[1]) == narrow  # not sticky
    one = data.recall(ivf.search(data.queries, K, nprobe=1)[1])
    every = data.recall(ivf.search(data.queries, K, nprobe=128)[1])
    assert one < 0.8 and every == 1.0
    assert data.recall(ivf.search(data.queries, K, nprobe=1)[1]) == one


@needs_milvus
def test_insert_exclude_delete_and_reopen(tmp_path: Path, data: Data) -> None:
    from lookalike.index.milvus_index import MilvusIndex

    spec = parse_spec("milvus-lite:v.db/photos?index=FLAT")
    index = MilvusIndex(spec, base=tmp_path)
    assert not index.exists()
    index.create(DIM)
    index.add(data.ids[:500], data.base[:500])
    assert index.count() == 500 and index.state().index == "index=FLAT"
    np.testing.assert_array_equal(index.ids(data.ids[499]), data.ids[:500])
    _, ids = index.search(data.base[:3], 4)
    assert ids[:, 0].tolist() == data.ids[:3].tolist()  # each finds itself first
    _, ids = index.search(data.base[:3], 4, exclude={int(data.ids[0])})
    assert int(data.ids[0]) not in ids and ids[1:, 0].tolist() == data.ids[1:3].tolist()
    index.delete(data.ids[:2])
    _, ids = index.search(data.base[:3], 4)
    assert not set(data.ids[:2].tolist()) & set(ids.ravel().tolist())
    assert index.present(data.ids[:5]) == set(data.ids[2:5].tolist())
    scores, ids = index.search(data.base[:1], 600)  # more than it holds: padded
    assert (ids[0, 498:] == -1).all() and np.isneginf(scores[0, 498:]).all()
    index.set_generation(41)
    index.close()

    again = MilvusIndex(spec, base=tmp_path)  # a new client: the data lives in v.db
    state = again.state()
    assert (state.dim, state.vectors, state.generation) == (DIM, 498, 41)
    _, ids = again.search(data.base[2:3], 1)
    assert ids[0, 0] == data.ids[2]
    again.close()


@needs_milvus
def test_milvus_lite_serves_one_process(tmp_path: Path) -> None:
    from lookalike.index.milvus_index import MilvusIndex

    spec = parse_spec("milvus-lite:v.db/photos")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from lookalike.index import parse_spec
            from lookalike.index.milvus_index import MilvusIndex
            index = MilvusIndex(parse_spec({spec.text!r}), base=Path({str(tmp_path)!r}))
            index.create(8)
            print("ready", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(CollectionLockedError, match="open in another process.*one process"):
            MilvusIndex(spec, base=tmp_path)
    finally:
        holder.communicate("", timeout=60)
    MilvusIndex(spec, base=tmp_path).close()  # free again once that process is gone


# ---------------------------------------------------------------------------------------------
# A collection of the sample photos in Milvus Lite
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def milvus_collection(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos indexed into Milvus Lite inside the collection folder (read-only:
    copy it to change it)."""
    path = tmp_path_factory.mktemp("milvus-collection") / "photos.lookalike"
    with Collection.create(path, index="milvus-lite") as col:
        col.index([sample_dir], workers=0)
    return path


@pytest.fixture
def col(milvus_collection: Path, tmp_path: Path):
    """A private, writable copy (the Milvus Lite data travels with the folder)."""
    path = tmp_path / "photos.lookalike"
    shutil.copytree(milvus_collection, path)
    with Collection.open(path) as collection:
        yield collection


def _first(col: Collection, image: Path) -> str:
    return col.search(image, k=3)[0].uri


@needs_milvus
def test_each_photo_finds_itself_first(col: Collection, sample_dir: Path) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    for photo in photos:
        hits = col.search(photo, k=3)
        assert hits[0].uri == str(photo) and hits[0].score > 0.99
    info = col.info()
    assert info.images == info.main_vectors == len(photos) and info.delta_vectors == 0
    assert info.index_spec.startswith("milvus-lite:milvus.db/lookalike?index=HNSW")
    assert info.index_kind.startswith("Milvus index=HNSW,M=32,efConstruction=64 at milvus-lite")
    assert (col.path / "milvus.db").is_dir()
    assert not (col.path / "main.index").exists() and not (col.path / "delta.index").exists()
    assert col.verify().ok
    similar = col.search_similar(col.find(photos[0]), k=3)  # excludes the image itself
    assert str(photos[0]) not in [h.uri for h in similar] and len(similar) == 3


@needs_milvus
def test_remove_add_reopen_and_rebuild(col: Collection, sample_dir: Path,
                                       edited: list[tuple[str, Path, Path]]) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    gone = photos[0]
    gone_id = col.find(gone)
    col.remove([gone])
    assert gone.name not in [Path(h.uri).name for h in col.search(gone, k=5)]
    assert col.live.tombstones == {gone_id}  # the store keeps its vector until a compaction
    extra = next(copy for edit, original, copy in edited if edit == "crop" and original != gone)
    report = col.add([extra])
    assert report.added == 1 and _first(col, extra) == str(extra)
    assert col.verify().ok
    path = col.path
    col.close()

    with Collection.open(path) as reopened:
        assert _first(reopened, extra) == str(extra) and _first(reopened, photos[1]) == str(
            photos[1])
        assert gone.name not in [Path(h.uri).name for h in reopened.search(gone, k=5)]
        rebuilt = reopened.rebuild()
        assert rebuilt.main_vectors == len(photos) and rebuilt.dropped_tombstones == 1
        assert reopened.live.tombstones == set() and reopened.verify().ok
        assert _first(reopened, extra) == str(extra)


@needs_milvus
def test_a_writer_that_dies_before_milvus_hears_is_healed_on_open(
    col: Collection, sample_dir: Path
) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    vector = col.embed([photos[2]])[0]
    # The store commits, then the process dies before telling Milvus: a new row, a removal.
    [new_id] = col.store.write([NewImage("/elsewhere/copy.jpg", 1, 1, "h", 8, 8, vector)])
    same, removed = col.find(photos[2]), col.find(photos[3])
    col.store.mark_removed([removed])
    report = col.verify()  # both committed after the generation Milvus holds: pending
    assert report.pending_vectors == 1 and report.ok, report.problems
    path = col.path
    col.close()

    with Collection.open(path) as healed:
        hits = healed.search(photos[2], k=2)
        assert {h.image_id for h in hits} == {new_id, same}
        assert photos[3].name not in [Path(h.uri).name for h in healed.search(photos[3], k=5)]
        after = healed.verify()
        assert after.ok and after.pending_vectors == 0


@needs_milvus
def test_reduce_projects_what_milvus_holds(col: Collection, sample_dir: Path) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    report = col.reduce(8)
    assert report.dim_after == 8 and report.vectors == len(photos)
    assert col.live.dim == 8 and col.info().index_dim == 8
    for photo in photos[:4]:
        assert _first(col, photo) == str(photo)
    assert col.verify().ok


@needs_milvus
def test_another_dimension_in_milvus_is_one_clear_error_and_rebuild_fixes_it(
    col: Collection, sample_dir: Path
) -> None:
    from lookalike.index.milvus_index import MilvusIndex

    path = col.path
    col.close()
    other = MilvusIndex(parse_spec("milvus-lite"), base=path)
    other.drop()
    other.create(16)
    other.close()
    with Collection.open(path) as broken:
        with pytest.raises(CorruptCollectionError, match=r"holds 16-d vectors.*lookalike rebuild"):
            broken.search(sample_dir / "coffee.jpg")
        assert not broken.verify().ok
        broken.rebuild()
        assert _first(broken, sample_dir / "coffee.jpg") == str(sample_dir / "coffee.jpg")
        assert broken.verify().ok


@needs_milvus
def test_a_taken_milvus_name_and_an_unreachable_server_are_one_clear_error(
    tmp_path: Path
) -> None:
    from lookalike.index.milvus_index import MilvusIndex

    shared = f"milvus-lite:{tmp_path / 'shared.db'}/photos"
    taken = MilvusIndex(parse_spec(shared))
    taken.create(32)
    taken.close()
    with pytest.raises(CollectionExistsError, match="already exists .0 vectors of dimension 32"):
        Collection.create(tmp_path / "a", index=shared)
    with pytest.raises(IndexUnavailableError,
                       match=r"Cannot connect to the Milvus collection milvus://127.0.0.1:1/"
                             r"photos.*Check that the Milvus server is running"):
        Collection.create(tmp_path / "b", index="milvus://127.0.0.1:1/photos")


@needs_milvus
def test_the_cli_indexes_into_milvus_lite_and_rebuilds(
    sample_dir: Path, edited: list[tuple[str, Path, Path]], tmp_path: Path
) -> None:
    path = tmp_path / "col"
    report = json.loads(run("index", sample_dir, "-c", path, "--index",
                            "milvus-lite:vectors.db/photos?index=IVF_FLAT&nlist=4",
                            "--json").stdout)
    assert report["added"] == len(list(sample_dir.glob("*.jpg")))
    info = json.loads(run("info", "-c", path, "--json").stdout)
    assert info["index_spec"] == "milvus-lite:vectors.db/photos?index=IVF_FLAT&nlist=4"
    assert info["main_vectors"] == report["added"] and info["delta_vectors"] == 0
    assert info["bytes_on_disk"]["vectors.db"] > 0  # the embedded engine's data is counted
    _, original, copy = next(e for e in edited if e[0] == "text")
    out = json.loads(run("search", copy, "-c", path, "-k", "3", "--json").stdout)
    assert out["results"][0]["uri"] == str(original) and len(out["results"]) == 3
    rebuilt = json.loads(run("rebuild", "-c", path, "--json").stdout)
    assert rebuilt["main_vectors"] == report["added"]
    assert "OK" in run("verify", "-c", path).stdout
