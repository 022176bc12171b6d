"""`lookalike bench`: the recall / speed / memory sweep against exact search, and its choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lookalike.cli import cli
from lookalike.collection import Collection
from lookalike.index import tuning


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return tuning.hold_out(tuning.clustered_vectors(6000, 32, seed=3), 200)


def test_clustered_vectors_are_unit_seeded_and_clustered() -> None:
    a = tuning.clustered_vectors(2000, 48, seed=1)
    assert a.shape == (2000, 48) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(a, tuning.clustered_vectors(2000, 48, seed=1))
    # Clustered: a point's nearest neighbour is much closer than a random other point.
    sims = a[:200] @ a.T
    np.fill_diagonal(sims[:, :200], -1)
    assert np.median(sims.max(axis=1)) > np.median(sims) + 0.3


def test_recall_at_k_counts_true_neighbours_found() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert tuning.recall_at_k(found, truth) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_sweep_measures_every_knob_against_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    base, queries = data
    candidates = [c for c in tuning.default_candidates(len(base), 32, scann=False)
                  if c.family in ("Flat", "HNSW", "IVF-Flat")]
    points = tuning.sweep(base, queries, 10, candidates, threads=2, latency_queries=50)
    by_family = {f: [p for p in points if p.family == f] for f in ("Flat", "HNSW", "IVF-Flat")}
    assert by_family["Flat"][0].recall == pytest.approx(1.0)
    for family in ("HNSW", "IVF-Flat"):
        recalls = [p.recall for p in by_family[family]]
        assert len(recalls) > 3
        assert recalls[-1] >= recalls[0] and recalls[-1] > 0.95  # more effort, more recall
    ivf = by_family["IVF-Flat"]
    assert ivf[0].recall < 0.9 < ivf[-1].recall  # nprobe=1 really searches fewer lists
    for p in points:
        assert p.qps_single > 0 and p.qps_multi > 0 and 0 < p.p50_ms <= p.p99_ms
        # Exact vectors cost 4 bytes a dimension; HNSW adds its links on top.
        assert p.bytes_per_vector >= 4 * 32
    hnsw_bytes = by_family["HNSW"][0].bytes_per_vector
    assert hnsw_bytes > by_family["Flat"][0].bytes_per_vector + 32 * 4  # 32 links x 4+ bytes


def test_sweep_keeps_built_indexes_for_the_next_run(data: tuple[np.ndarray, np.ndarray],
                                                    tmp_path: Path) -> None:
    base, queries = data
    candidates = [tuning.Candidate("HNSW16", "HNSW", ({"ef_search": 16},))]
    messages: list[str] = []
    first = tuning.sweep(base, queries, 10, candidates, keep=tmp_path, progress=messages.append)
    again = tuning.sweep(base, queries, 10, candidates, keep=tmp_path, progress=messages.append)
    assert [m.split()[0] for m in messages if not m.startswith(" ")] == ["building", "loading"]
    assert again[0].recall == first[0].recall and again[0].build_s == first[0].build_s


def _point(family: str, recall: float, qps: float, memory: int, p99: float = 1.0,
           **knobs: int) -> tuning.BenchPoint:
    return tuning.BenchPoint("spec", family, knobs, recall, qps, qps * 2, p99 / 2, p99, 1.0,
                             memory, 1000, 2)


def test_recommend_picks_the_cheapest_point_that_meets_the_targets() -> None:
    slow_exact = _point("Flat", 1.0, 100, 512_000, p99=20)
    fast_low = _point("HNSW", 0.90, 9000, 900_000, ef_search=16)
    fast_ok = _point("HNSW", 0.96, 6000, 900_000, ef_search=32)
    small_ok = _point("IVF-PQ+refine", 0.955, 3000, 300_000, nprobe=16)
    points = [slow_exact, fast_low, fast_ok, small_ok]
    assert tuning.recommend(points, 0.95) is fast_ok
    assert tuning.recommend(points, 0.95, prefer="memory") is small_ok
    assert tuning.recommend(points, 0.99) is slow_exact
    assert tuning.recommend(points, 0.99, max_latency_ms=5) is None
    assert tuning.pareto(points) == [slow_exact, fast_low, fast_ok]


def test_save_report_writes_csv_json_and_a_plot(tmp_path: Path) -> None:
    points = [_point("HNSW", r, q, 1000, ef_search=e) for r, q, e in
              ((0.9, 9000, 16), (0.96, 6000, 32), (0.99, 3000, 64))]
    paths = tuning.save_report(points, tmp_path / "out", k=10, target_recall=0.95,
                               recommended=points[1], title="test")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(paths["csv"].read_text().splitlines()) == 4
    saved = json.loads(paths["json"].read_text())
    assert saved["recommended"]["knobs"] == {"ef_search": 32} and len(saved["points"]) == 3


def test_bench_cli_on_synthetic_vectors(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", "--synthetic", "4000", "--dim", "16",
                                      "--queries", "100", "--only", "flat,hnsw",
                                      "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["recommended"]["recall"] >= 0.95
    assert {p["family"] for p in report["points"]} == {"Flat", "HNSW"}
    assert (tmp_path / "bench.png").is_file()


def test_bench_cli_rejects_unknown_family_and_apply_without_collection() -> None:
    result = CliRunner().invoke(cli, ["bench", "--synthetic", "4000", "--only", "annoy"])
    assert result.exit_code == 2 and "annoy" in result.output and "hnsw" in result.output
    result = CliRunner().invoke(cli, ["bench", "--synthetic", "4000", "--apply"])
    assert result.exit_code == 2 and "--apply" in result.output


def test_bench_apply_rebuilds_the_collection_with_the_recommendation(
        sample_collection: Path, tmp_path: Path) -> None:
    from lookalike.storage import NewImage

    folder = tmp_path / "col"
    shutil.copytree(sample_collection, folder)
    with Collection.open(folder) as col:  # the sample photos plus 1,500 synthetic neighbours
        query = col.details(int(col.live.live_ids()[0])).uri
        extra = tuning.clustered_vectors(1500, col.dim, seed=5)
        col.store.write(NewImage(uri=f"/synthetic/{i}.jpg", size=1, mtime_ns=1,
                                 content_hash=None, vector=v) for i, v in enumerate(extra))
        n = len(col.index_vectors())
    result = CliRunner().invoke(cli, ["bench", "-c", str(folder), "--queries", "50",
                                      "--only", "hnsw", "--out", str(tmp_path / "b"),
                                      "--apply", "--json"])
    assert result.exit_code == 0, result.output
    applied = json.loads(result.stdout)["applied"]
    assert applied["spec"].startswith("HNSW") and "ef_search" in applied["search"]
    with Collection.open(folder) as col:
        assert col.manifest.index_spec == applied["spec"]
        assert col.manifest.search == applied["search"]
        assert col.live.main_kind.startswith("HNSW") and col.live.main_vectors == n
        assert col.search(query, k=1)[0].uri == query
        assert col.verify().ok


def test_an_open_collection_follows_set_index_from_another_handle(
        sample_collection: Path, tmp_path: Path) -> None:
    folder = tmp_path / "col"
    shutil.copytree(sample_collection, folder)
    with Collection.open(folder) as reader, Collection.open(folder) as writer:
        query = reader.details(int(reader.live.live_ids()[0])).uri
        assert reader.search(query, k=1)[0].uri == query
        writer.set_index("HNSW16", search={"ef_search": 20})
        assert reader.search(query, k=1)[0].uri == query
        assert reader.live.spec.text == "HNSW16,efConstruction=128"
        assert reader.live.main_kind.startswith("HNSW16")
        assert reader.search_defaults() == {"ef_search": 20}
