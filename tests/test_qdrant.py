"""Qdrant as the vector index: the spec, both engines on seeded vectors with exact ground truth
(congruence with the Faiss backend), and collections of the sample photos end to end.

``qdrant-edge:`` runs Qdrant Edge, Qdrant's engine in this process, for real. ``qdrant://`` runs
the real client code (:class:`QdrantIndex`) against qdrant-client's local mode: no Qdrant server
can run here, so :func:`lookalike.index.qdrant_index.connect` is pointed at a local-mode client.
Local mode searches exhaustively, so HNSW and ``ef`` are measured on Qdrant Edge. An unreachable
server is the real client, unpatched.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import TINY
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
from lookalike.storage import NewImage
from test_cli import run
from test_milvus import DIM, TIE, Data

pytestmark = [
    pytest.mark.qdrant,
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]

# CI installs the qdrant extra: there a missing package is a failure, not a skip.
MISSING = [m for m in ("qdrant_client", "qdrant_edge") if importlib.util.find_spec(m) is None]
needs_qdrant = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("CI"),
    reason="the Qdrant backend needs `pip install 'lookalike[qdrant]'`",
)
K = 10
HNSW = "m=8&ef_construct=40&indexing_threshold=1"  # a graph for every segment, however small


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "canonical"), [
    ("qdrant-edge", "qdrant-edge:qdrant/lookalike?index=hnsw&m=32&ef_construct=128"),
    ("qdrant-edge:photos", "qdrant-edge:qdrant/photos?index=hnsw&m=32&ef_construct=128"),
    ("qdrant-edge:/data/vectors/photos?index=EXACT",
     "qdrant-edge:/data/vectors/photos?index=exact"),
    ("qdrant://qdrant.example/photos?M=16&ef_construct=200&indexing_threshold=2000",
     "qdrant://qdrant.example:6333/photos?index=hnsw&m=16&ef_construct=200&"
     "indexing_threshold=2000"),
    ("qdrant://10.0.0.5:6334/photos?index=exact&https=false",
     "qdrant://10.0.0.5:6334/photos?index=exact&https=false"),
])
def test_qdrant_specs_parse_to_one_canonical_form(text: str, canonical: str) -> None:
    spec = parse_spec(text)
    assert spec.kind == "qdrant" and spec.text == canonical
    assert parse_spec(spec.text) == spec  # what the manifest records reads back the same
    assert not spec.trainable and spec.for_size(10**6) == spec
    assert spec.database == canonical.partition("?")[0]


def test_qdrant_spec_fields_map_to_qdrant_parameters() -> None:
    server = parse_spec("qdrant://db.local/photos?m=24&ef_construct=80&https=true")
    assert server.qdrant is not None and not server.qdrant.is_edge
    assert (server.m, server.ef_construction, server.qdrant.index_type) == (24, 80, "hnsw")
    assert (server.qdrant.host, server.qdrant.port, server.qdrant.https) == ("db.local", 6333, True)
    assert server.qdrant.threshold == 10_000  # Qdrant's default indexing threshold (KB)
    edge = parse_spec("qdrant-edge:photos?indexing_threshold=64")
    assert edge.qdrant is not None and edge.qdrant.is_edge and edge.qdrant.edge_dir == "qdrant"
    assert edge.qdrant.threshold == 64 and edge.qdrant.https is None


@pytest.mark.parametrize(("text", "why"), [
    ("qdrant://host:6333/", "name the collection"),
    ("qdrant://host/a/b", "name the collection"),
    ("qdrant://secret-key@host/photos", "LOOKALIKE_QDRANT_API_KEY"),
    ("qdrant://host:99999/photos", "port"),
    ("qdrant://host/pho:tos", "not a Qdrant collection name"),
    ("qdrant-edge:data/.photos", "not a Qdrant collection name"),
    ("qdrant://host/photos?index=ivf", "index must be one of hnsw, exact"),
    ("qdrant://host/photos?nlist=64", "index=hnsw takes m, ef_construct, indexing_threshold, "
                                      "not nlist"),
    ("qdrant://host/photos?index=exact&m=16", "index=exact takes no parameters"),
    ("qdrant://host/photos?m=2", "m must be 4-256"),
    ("qdrant://host/photos?ef_construct=5000", "ef_construct 8-4096"),
    ("qdrant://host/photos?m=many", "m must be a whole number"),
    ("qdrant://host/photos?m=16&M=16", "m is given twice"),
    ("qdrant://host/photos?https=maybe", "https must be true or false"),
    ("qdrant-edge:photos?https=true", "a Qdrant server's setting"),
])
def test_invalid_qdrant_specs_say_why_and_show_the_forms(text: str, why: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert repr(text) in message and why in message
    assert "qdrant://HOST[:PORT]/NAME" in message and "qdrant-edge:" in message


def test_other_invalid_specs_mention_qdrant() -> None:
    with pytest.raises(InvalidSpecError, match="qdrant://HOST:PORT/NAME"):
        parse_spec("Qdrant")


@pytest.mark.parametrize(("module", "text"), [("qdrant_edge", "qdrant-edge"),
                                              ("qdrant_client", "qdrant://host/photos")])
def test_a_missing_qdrant_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, module: str,
                                                  text: str) -> None:
    from lookalike.live import claim_index

    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[qdrant\]'"):
        claim_index(parse_spec(text), Path("unused"), 8, None)


# ---------------------------------------------------------------------------------------------
# Both engines, on seeded clustered vectors with exact ground truth
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    host: str
    port: int
    https: bool | None
    api_key: str | None


class _Shared:
    """One local-mode client handed to every QdrantIndex (local mode locks its folder to one
    client); closing it is left to the fixture."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def local_client() -> Iterator[Any]:
    """qdrant-client in local mode: the same calls a server answers, answered in this process
    (in memory: on disk, local mode takes a second per thousand points)."""
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:")
    yield client
    client.close()


def _serve_locally(patch: pytest.MonkeyPatch, client: Any) -> list[Connection]:
    """Point ``qdrant://`` specs at ``client``; returns the connections made, in order."""
    from lookalike.index import qdrant_index

    connections: list[Connection] = []

    def connect(host: str, port: int, *, https: bool | None, api_key: str | None,
                timeout: int = 60) -> Any:
        connections.append(Connection(host, port, https, api_key))
        return _Shared(client)

    patch.setattr(qdrant_index, "connect", connect)
    return connections


@pytest.fixture
def local_qdrant(local_client: Any, monkeypatch: pytest.MonkeyPatch) -> list[Connection]:
    """``qdrant://`` answered by local mode, for one test; the connections made, in order."""
    return _serve_locally(monkeypatch, local_client)


@pytest.fixture(scope="module")
def data() -> Data:
    return Data()


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, data: Data,
            local_client: Any) -> Iterator[dict[str, Any]]:
    """The data in Qdrant Edge (exact and HNSW) and in local mode through the server client."""
    from lookalike.index.qdrant_edge import QdrantEdgeIndex
    from lookalike.index.qdrant_index import QdrantIndex

    folder = tmp_path_factory.mktemp("qdrant-edge")
    with pytest.MonkeyPatch.context() as patch:
        _serve_locally(patch, local_client)
        server = QdrantIndex(parse_spec("qdrant://qdrant.test/vectors?index=exact"))
    made = {"edge": QdrantEdgeIndex(parse_spec("qdrant-edge:v/exact?index=exact"), base=folder),
            "edge-hnsw": QdrantEdgeIndex(parse_spec(f"qdrant-edge:v/hnsw?{HNSW}"), base=folder),
            "server": server}
    for index in made.values():
        index.create(DIM)
        index.add(data.ids, data.base)
        index.compact()  # Qdrant Edge builds the graph now
    yield made
    for index in made.values():
        index.close()


@needs_qdrant
@pytest.mark.parametrize("engine", ["edge", "server"])
def test_exact_gives_the_same_top_k_as_faiss_flat(engines: dict, data: Data, engine: str) -> None:
    faiss_flat = build_index(parse_spec("Flat"), DIM, data.ids, data.base)
    q_scores, q_ids = engines[engine].search(data.queries, K)
    f_scores, f_ids = faiss_flat.search(data.queries, K)
    assert data.recall(q_ids) == 1.0 and data.recall(f_ids) == 1.0
    np.testing.assert_allclose(q_scores, f_scores, atol=TIE)
    assert np.mean(q_ids == f_ids) > 0.99  # equal but for the order of exact ties


@needs_qdrant
@pytest.mark.parametrize("share", [0.005, 0.1])  # a searcher post-filters broader filters
def test_an_id_filter_gives_exact_filtered_search(engines: dict, data: Data,
                                                  share: float) -> None:
    allowed = data.allowed(share)
    for name in ("edge", "server", "edge-hnsw"):  # allowed ids are compared exactly
        found = engines[name].search(data.queries[:50], K, allowed=allowed, ef_search=64)[1]
        assert data.filtered_recall(found, allowed) == 1.0, name


@needs_qdrant
@pytest.mark.parametrize("ef", [10, 20, 40])
def test_hnsw_recall_matches_faiss_hnsw(engines: dict, data: Data, ef: int) -> None:
    assert engines["edge-hnsw"].in_graphs() == len(data.ids)  # not an exhaustive scan
    faiss_hnsw = build_index(parse_spec("HNSW8,efConstruction=40"), DIM, data.ids, data.base)
    qdrant = data.recall(engines["edge-hnsw"].search(data.queries, K, ef_search=ef)[1])
    faiss = data.recall(faiss_hnsw.search(data.queries, K, ef_search=ef)[1])
    # Qdrant builds its graph in parallel threads, so its recall moves between runs; a clean
    # clone once measured exactly 0.0200 apart at ef=20 (0.9485 against 0.9685).
    assert abs(qdrant - faiss) <= 0.03, (qdrant, faiss)


@needs_qdrant
def test_ef_applies_to_one_call_only(engines: dict, data: Data) -> None:
    hnsw = engines["edge-hnsw"]
    narrow = data.recall(hnsw.search(data.queries, K, ef_search=10)[1])
    wide = data.recall(hnsw.search(data.queries, K, ef_search=200)[1])
    assert narrow < 0.95 and wide > 0.99
    assert data.recall(hnsw.search(data.queries, K, ef_search=10)[1]) == narrow  # not sticky
    assert data.recall(engines["edge"].search(data.queries, K, ef_search=1)[1]) == 1.0  # exact


@needs_qdrant
@pytest.mark.parametrize("engine", ["edge", "server"])
def test_insert_exclude_delete_and_reopen(tmp_path: Path, data: Data, engine: str,
                                          local_qdrant: list[Connection]) -> None:
    from lookalike.index.qdrant_edge import QdrantEdgeIndex
    from lookalike.index.qdrant_index import QdrantIndex

    def client() -> QdrantEdgeIndex | QdrantIndex:
        if engine == "edge":
            return QdrantEdgeIndex(parse_spec("qdrant-edge:photos?index=exact"), base=tmp_path)
        return QdrantIndex(parse_spec(f"qdrant://qdrant.test/{tmp_path.name}?index=exact"))

    index = client()
    assert not index.exists()
    index.create(DIM)
    index.add(data.ids[:500], data.base[:500])
    assert index.count() == 500 and index.state().index == "index=exact"
    np.testing.assert_array_equal(index.ids(0), data.ids[:500])
    _, ids = index.search(data.base[:3], 4)
    assert ids[:, 0].tolist() == data.ids[:3].tolist()  # each finds itself first
    _, ids = index.search(data.base[:3], 4, exclude={int(data.ids[0])})
    assert int(data.ids[0]) not in ids and ids[1:, 0].tolist() == data.ids[1:3].tolist()
    index.delete(data.ids[:2])
    _, ids = index.search(data.base[:3], 4)
    assert not set(data.ids[:2].tolist()) & set(ids.ravel().tolist())
    scores, ids = index.search(data.base[:1], 600)  # more than it holds: padded
    assert (ids[0, 498:] == -1).all() and np.isneginf(scores[0, 498:]).all()
    index.set_generation(41)
    index.close()  # no flush of its own: a closed edge shard keeps what its log holds

    again = client()
    state = again.state()
    assert (state.dim, state.vectors, state.generation) == (DIM, 498, 41)
    np.testing.assert_array_equal(again.ids(0), data.ids[2:500])
    _, ids = again.search(data.base[2:3], 1)
    assert ids[0, 0] == data.ids[2]
    again.close()


@needs_qdrant
def test_qdrant_edge_serves_one_process(tmp_path: Path) -> None:
    from lookalike.index.qdrant_edge import QdrantEdgeIndex

    spec = parse_spec("qdrant-edge:photos")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from lookalike.index import parse_spec
            from lookalike.index.qdrant_edge import QdrantEdgeIndex
            index = QdrantEdgeIndex(parse_spec({spec.text!r}), base=Path({str(tmp_path)!r}))
            index.create(8)
            print("ready", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(CollectionLockedError, match="open in another process.*one process"):
            QdrantEdgeIndex(spec, base=tmp_path).count()
    finally:
        holder.communicate("", timeout=60)
    index = QdrantEdgeIndex(spec, base=tmp_path)  # free again once that process is gone
    assert index.count() == 0
    index.close()


# ---------------------------------------------------------------------------------------------
# A collection of the sample photos in Qdrant Edge
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edge_collection(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos (test model) indexed into Qdrant Edge inside the collection folder
    (read-only: copy it to change it)."""
    path = tmp_path_factory.mktemp("qdrant-collection") / "photos.lookalike"
    with Collection.create(path, model=TINY, index="qdrant-edge") as col:
        col.index([sample_dir], workers=0)
    return path


@pytest.fixture
def col(edge_collection: Path, tmp_path: Path) -> Iterator[Collection]:
    """A private, writable copy (the shard travels with the folder)."""
    path = tmp_path / "photos.lookalike"
    shutil.copytree(edge_collection, path)
    with Collection.open(path) as collection:
        yield collection


def _first(col: Collection, image: Path) -> str:
    return col.search(image, k=3, qe=0)[0].uri


def _finds_themselves(col: Collection, photos: list[Path]) -> bool:
    return all(_first(col, photo) == str(photo) for photo in photos)


@needs_qdrant
def test_each_photo_finds_itself_first(col: Collection, sample_dir: Path) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    assert _finds_themselves(col, photos)
    info = col.info()
    assert info.images == info.main_vectors == len(photos) and info.delta_vectors == 0
    assert info.index_spec == "qdrant-edge:qdrant/lookalike?index=hnsw&m=32&ef_construct=128"
    assert info.index_kind == ("Qdrant index=hnsw,m=32,ef_construct=128 at "
                               "qdrant-edge:qdrant/lookalike")
    recorded = json.loads((col.path / "qdrant" / "lookalike" / "lookalike.json").read_text())
    assert recorded == {"index": "index=hnsw&m=32&ef_construct=128",
                        "generation": col.store.generation()}
    assert not (col.path / "main.index").exists() and not (col.path / "delta.index").exists()
    assert col.verify().ok
    similar = col.search_similar(col.find(photos[0]), k=3)  # excludes the image itself
    assert str(photos[0]) not in [h.uri for h in similar] and len(similar) == 3


@needs_qdrant
def test_remove_add_compact_reopen_and_rebuild(col: Collection, sample_dir: Path,
                                               edited: list[tuple[str, Path, Path]]) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    gone = photos[0]
    gone_id = col.find(gone)
    col.remove([gone])
    assert gone.name not in [Path(h.uri).name for h in col.search(gone, k=5)]
    assert col.live.tombstones == {gone_id}  # the store keeps its vector until a compaction
    extra = next(copy for edit, original, copy in edited if edit == "crop" and original != gone)
    assert col.add([extra]).added == 1 and _first(col, extra) == str(extra)
    assert col.verify().ok
    compacted = col.compact()
    assert compacted is not None and compacted.dropped_tombstones == 1
    assert compacted.main_vectors == len(photos) and col.live.tombstones == set()
    path = col.path
    col.close()

    with Collection.open(path) as reopened:
        assert _first(reopened, extra) == str(extra) and _finds_themselves(reopened, photos[1:])
        assert gone.name not in [Path(h.uri).name for h in reopened.search(gone, k=5)]
        rebuilt = reopened.rebuild()
        assert rebuilt.main_vectors == len(photos) and reopened.verify().ok
        assert _first(reopened, extra) == str(extra)


@needs_qdrant
def test_a_writer_that_dies_before_qdrant_hears_is_healed_on_open(
    col: Collection, sample_dir: Path
) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    vector = col.embed([photos[2]])[0]
    # The store commits, then the process dies before telling Qdrant: a new row, a removal.
    [new_id] = col.store.write([NewImage("/elsewhere/copy.jpg", 1, 1, "h", 8, 8, vector)])
    same, removed = col.find(photos[2]), col.find(photos[3])
    col.store.mark_removed([removed])
    report = col.verify()  # both committed after the generation Qdrant holds: pending
    assert report.pending_vectors == 1 and report.ok, report.problems
    recorded = json.loads((col.path / "qdrant" / "lookalike" / "lookalike.json").read_text())
    assert recorded["generation"] < col.store.generation()
    path = col.path
    col.close()

    with Collection.open(path) as healed:
        hits = healed.search(photos[2], k=2, qe=0)
        assert {h.image_id for h in hits} == {new_id, same}
        assert photos[3].name not in [Path(h.uri).name for h in healed.search(photos[3], k=5)]
        after = healed.verify()
        assert after.ok and after.pending_vectors == 0


@needs_qdrant
def test_a_writer_killed_between_checkpoints_loses_nothing(col: Collection,
                                                          sample_dir: Path) -> None:
    photo = sorted(sample_dir.glob("*.jpg"))[5]
    path = col.path
    np.save(path.parent / "v.npy", col.embed([photo])[0])
    col.close()
    # Another process commits, Qdrant Edge hears of it (in its write-ahead log, the generation
    # only noted), then the process is killed before any checkpoint records that generation.
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import conftest  # the test model, registered
        from lookalike import Collection
        from lookalike.storage import NewImage
        col = Collection.open({str(path)!r})
        col.search_vector(np.load({str(path.parent / "v.npy")!r}), k=1)  # opened and caught up
        with col.writer():
            col.store.write([NewImage("/elsewhere/copy.jpg", 1, 1, "h", 8, 8,
                                      np.load({str(path.parent / "v.npy")!r}))])
            col.indexes.committed()
        os.kill(os.getpid(), signal.SIGKILL)
    """)], timeout=120)
    assert killed.returncode == -9, killed.stderr
    recorded = json.loads((path / "qdrant" / "lookalike" / "lookalike.json").read_text())
    with Collection.open(path) as healed:
        assert recorded["generation"] < healed.store.generation()  # the record lagged
        new_id = healed.find("/elsewhere/copy.jpg")
        assert new_id in {h.image_id for h in healed.search(photo, k=2, qe=0)}
        assert healed.live.main_vectors == healed.info().images  # re-applied, not doubled
        assert healed.verify().ok


@needs_qdrant
def test_reduce_projects_what_qdrant_holds(col: Collection, sample_dir: Path) -> None:
    from lookalike.index.qdrant_edge import QdrantEdgeIndex

    photos = sorted(sample_dir.glob("*.jpg"))
    report = col.reduce(8)
    assert report.dim_after == 8 and report.vectors == len(photos)
    assert col.live.dim == 8 and col.info().index_dim == 8
    shard = QdrantEdgeIndex(col.spec, base=col.path)
    assert shard.state().dim == 8  # Qdrant holds the projected vectors ...
    query = col.live.project(col.embed([photos[4]]))
    _, ids = shard.search(query, 1)  # ... and answers projected queries with the right image
    assert ids[0, 0] == col.find(photos[4])
    shard.close()
    assert _finds_themselves(col, photos[:4]) and col.verify().ok


@needs_qdrant
def test_another_dimension_in_qdrant_is_one_clear_error_and_rebuild_fixes_it(
    col: Collection, sample_dir: Path
) -> None:
    from lookalike.index.qdrant_edge import QdrantEdgeIndex

    path = col.path
    col.close()
    other = QdrantEdgeIndex(parse_spec("qdrant-edge"), base=path)
    other.drop()
    other.create(16)
    other.close()
    with Collection.open(path) as broken:
        with pytest.raises(CorruptCollectionError, match=r"holds 16-d vectors.*lookalike rebuild"):
            broken.search(sample_dir / "coffee.jpg")
        assert "has dimension 16" in " ".join(broken.verify().problems)
        broken.rebuild()
        assert _first(broken, sample_dir / "coffee.jpg") == str(sample_dir / "coffee.jpg")
        assert broken.verify().ok


@needs_qdrant
def test_a_faiss_collection_moves_into_qdrant_edge(tiny_collection: Path, tmp_path: Path,
                                                   sample_dir: Path) -> None:
    path = tmp_path / "moved"
    shutil.copytree(tiny_collection, path)
    with Collection.open(path) as col:
        report = col.set_index("qdrant-edge:vectors/photos?index=exact")
        assert report.main_vectors == len(list(sample_dir.glob("*.jpg")))
        assert col.info().index_kind == "Qdrant index=exact at qdrant-edge:vectors/photos"
        assert (path / "vectors" / "photos" / "lookalike.json").is_file()
        assert _finds_themselves(col, sorted(sample_dir.glob("*.jpg"))[:3]) and col.verify().ok


@needs_qdrant
def test_a_taken_qdrant_name_and_an_unreachable_server_are_one_clear_error(
    tmp_path: Path
) -> None:
    from lookalike.index.qdrant_edge import QdrantEdgeIndex

    shared = f"qdrant-edge:{tmp_path / 'shared'}/photos"
    taken = QdrantEdgeIndex(parse_spec(shared))
    taken.create(32)
    taken.close()
    with pytest.raises(CollectionExistsError, match="already exists .0 vectors of dimension 32"):
        Collection.create(tmp_path / "a", model=TINY, index=shared)
    with pytest.raises(IndexUnavailableError,
                       match=r"Cannot connect to the Qdrant collection qdrant://127.0.0.1:1/"
                             r"photos: .*Connection refused.*Check that the Qdrant server is "
                             r"running"):
        Collection.create(tmp_path / "b", model=TINY, index="qdrant://127.0.0.1:1/photos")


class _Refusing(BaseHTTPRequestHandler):
    """A Qdrant server's answer to a wrong API key, whatever is asked; records the keys sent."""

    keys: list[str | None] = []

    def _refuse(self) -> None:
        type(self).keys.append(self.headers.get("api-key"))
        body = b'{"status": {"error": "Invalid API key or JWT"}, "time": 0.0}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _refuse

    def log_message(self, *args: object) -> None:
        pass


@needs_qdrant
@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_a_refused_api_key_is_one_clear_error(tiny_collection: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("LOOKALIKE_QDRANT_API_KEY", "wrong-key")
    path = tmp_path / "c"
    shutil.copytree(tiny_collection, path)
    try:
        with Collection.open(path) as col, pytest.raises(
            IndexUnavailableError,
            match=r"Cannot connect to the Qdrant collection qdrant://127.0.0.1:\d+/photos: 401 "
                  r"Unauthorized .*Invalid API key.*LOOKALIKE_QDRANT_API_KEY",
        ):
            col.set_index(f"qdrant://127.0.0.1:{server.server_port}/photos?https=false")
    finally:
        server.shutdown()
    assert _Refusing.keys == ["wrong-key"]  # the real client sent the key, over plain HTTP
    assert "wrong-key" not in (path / "manifest.json").read_text()


# ---------------------------------------------------------------------------------------------
# A collection on a "server": the qdrant:// client against local mode
# ---------------------------------------------------------------------------------------------


@needs_qdrant
def test_a_server_collection_heals_rebuilds_and_never_records_the_api_key(
    local_qdrant: list[Connection], sample_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOKALIKE_QDRANT_API_KEY", "s3cret-qdrant-key")
    photos = sorted(sample_dir.glob("*.jpg"))
    spec = "qdrant://qdrant.example:6333/photos?m=16&ef_construct=64"
    with Collection.create(tmp_path / "c", model=TINY, index=spec) as col:
        col.index([sample_dir], workers=0)
        assert _finds_themselves(col, photos)
        info = col.info()
        assert info.images == info.main_vectors == len(photos)
        assert info.index_kind == ("Qdrant index=hnsw,m=16,ef_construct=64 at "
                                   "qdrant://qdrant.example:6333/photos")
        assert col.verify().ok
        # A writer commits to the store and dies before Qdrant hears of it.
        vector = col.embed([photos[2]])[0]
        [new_id] = col.store.write([NewImage("/elsewhere/copy.jpg", 1, 1, "h", 8, 8, vector)])
        col.store.mark_removed([col.find(photos[3])])
        assert col.verify().pending_vectors == 1
    assert "s3cret" not in (tmp_path / "c" / "manifest.json").read_text()
    opened = len(local_qdrant)

    with Collection.open(tmp_path / "c") as healed:
        assert new_id in {h.image_id for h in healed.search(photos[2], k=2, qe=0)}
        assert photos[3].name not in [Path(h.uri).name for h in healed.search(photos[3], k=5)]
        assert healed.verify().ok
        rebuilt = healed.rebuild()  # a server is rewritten in place
        assert rebuilt.main_vectors == len(photos) and healed.verify().ok
        assert _finds_themselves(healed, [p for p in photos if p not in photos[2:4]])
    made = local_qdrant[opened:]
    assert made and {(c.host, c.port, c.api_key) for c in made} == {
        ("qdrant.example", 6333, "s3cret-qdrant-key")}
    assert "s3cret" not in (tmp_path / "c" / "manifest.json").read_text()


@needs_qdrant
def test_the_cli_indexes_into_qdrant_edge_and_rebuilds(
    sample_dir: Path, edited: list[tuple[str, Path, Path]], tmp_path: Path
) -> None:
    path = tmp_path / "col"
    report = json.loads(run("index", sample_dir, "-c", path, "--index",
                            "qdrant-edge:vectors/photos?index=exact", "--json").stdout)
    assert report["added"] == len(list(sample_dir.glob("*.jpg")))
    info = json.loads(run("info", "-c", path, "--json").stdout)
    assert info["index_spec"] == "qdrant-edge:vectors/photos?index=exact"
    assert info["main_vectors"] == report["added"] and info["delta_vectors"] == 0
    assert info["bytes_on_disk"]["vectors/photos"] > 0  # the shard's data is counted
    _, original, copy = next(e for e in edited if e[0] == "text")
    out = json.loads(run("search", copy, "-c", path, "-k", "3", "--json").stdout)
    assert out["results"][0]["uri"] == str(original) and len(out["results"]) == 3
    rebuilt = json.loads(run("rebuild", "-c", path, "--json").stdout)
    assert rebuilt["main_vectors"] == report["added"]
    assert "OK" in run("verify", "-c", path).stdout


def test_bench_apply_never_moves_vectors_out_of_qdrant(edge_collection: Path,
                                                       tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lookalike.cli import cli

    path = tmp_path / "photos.lookalike"
    shutil.copytree(edge_collection, path)
    result = CliRunner().invoke(cli, ["bench", "-c", str(path), "--apply"])
    assert result.exit_code == 2 and "out of Qdrant" in result.output
    with Collection.open(path) as col:
        assert col.spec.qdrant is not None


def test_while_another_process_holds_the_shard_writes_are_refused_before_the_store(
        col: Collection, sample_dir: Path) -> None:
    """A server holds the Qdrant Edge shard: `add` and `remove` from another process must fail
    without writing anything (the server would otherwise apply what they said had failed)."""
    path, photo = col.path, sorted(sample_dir.glob("*.jpg"))[0]
    col.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(Path(__file__).parent)!r})
            import conftest  # the test model, registered
            from lookalike import Collection
            col = Collection.open({str(path)!r})
            col.live  # opens the shard, as a server does
            print("ready", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with Collection.open(path) as other:
            rows = other.store.counts()
            with pytest.raises(CollectionLockedError, match="open in another process"):
                other.remove([photo])
            mirrored = io.BytesIO()
            Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, "JPEG")
            with pytest.raises(CollectionLockedError, match="open in another process"):
                other.add_bytes(mirrored.getvalue())
            (new := path.parent / "new.jpg").write_bytes(mirrored.getvalue())
            with pytest.raises(CollectionLockedError, match="open in another process"):
                other.add([new])
            assert other.store.counts() == rows
    finally:
        holder.communicate("", timeout=60)
