"""Main + delta indexes, tombstones, compaction, readers in step with writers, verify/rebuild."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, make_variants
from lookalike import Collection
from lookalike.errors import CollectionLockedError, CorruptCollectionError, ImageNotFoundError
from lookalike.live import CompactionPolicy


@pytest.fixture
def col(sample_dir: Path, tmp_path: Path) -> Collection:
    # The test model: these tests are about the indexes, which only need photos told apart.
    collection = Collection.create(tmp_path / "col", model=TINY, index="Flat")
    collection.index([sample_dir], workers=0, show_progress=False)  # first run builds main
    return collection


def _top(col: Collection, image: Path, k: int = 5) -> list[int]:
    return [h.image_id for h in col.search(image, k=k)]


def test_first_run_builds_main_then_additions_go_to_the_delta(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    info = col.info()
    assert info.main_vectors == info.images and info.delta_vectors == 0
    new = make_variants(sample_dir, tmp_path / "new", 3)
    col.add(new, workers=0, show_progress=False)
    info = col.info()
    assert info.delta_vectors == 3 and info.main_vectors == info.images - 3
    assert col.search(new[1], k=1)[0].uri == str(new[1])  # searchable at once, from the delta
    assert (col.path / "delta.index").is_file()


def test_removal_is_immediate_and_compaction_drops_tombstones(
    col: Collection, sample_dir: Path
) -> None:
    before = _top(col, sample_dir / "coffee.jpg", k=8)
    gone = col.remove([sample_dir / "rocket.jpg", before[1]])
    after = _top(col, sample_dir / "coffee.jpg", k=6)
    assert not set(gone) & set(after)
    assert after == [i for i in before if i not in gone][:6]
    assert col.info().tombstones == 2
    report = col.compact()
    assert report is not None and report.dropped_tombstones == 2
    info = col.info()
    assert info.tombstones == 0 and info.main_vectors == info.images
    assert _top(col, sample_dir / "coffee.jpg", k=6) == after  # same results after the merge
    with pytest.raises(ImageNotFoundError):
        col.remove([gone[0]])


def test_other_readers_catch_up_without_reopening(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    reader = Collection.open(col.path)  # another handle: its own store connection and indexes
    new = make_variants(sample_dir, tmp_path / "new", 2)
    assert reader.search(new[0], k=1)[0].uri != str(new[0])
    col.add(new, workers=0, show_progress=False)
    assert reader.search(new[0], k=1)[0].uri == str(new[0])
    col.remove([new[0]])
    assert str(new[0]) not in {h.uri for h in reader.search(new[0], k=5)}
    col.compact()  # a new main.index file: the reader swaps it in on its next search
    assert reader.search(new[1], k=1)[0].uri == str(new[1])
    assert reader.info().main_vectors == col.info().main_vectors


def test_compaction_keeps_additions_made_while_it_runs(
    col: Collection, sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = make_variants(sample_dir, tmp_path / "new", 4)
    live = col.live
    original = live.store.iter_vectors
    added = threading.Event()

    def slow_iter(**kwargs):  # the build reads its snapshot while a writer adds images
        for chunk in original(**kwargs):
            if kwargs.get("upto_generation") is not None and not added.is_set():
                writer = Collection.open(col.path)
                writer.add(new, workers=0, show_progress=False)
                added.set()
            yield chunk

    monkeypatch.setattr(live.store, "iter_vectors", slow_iter)
    col.compact()
    monkeypatch.undo()
    assert added.is_set()
    for path in new:
        assert col.search(path, k=1)[0].uri == str(path)
    assert col.verify().ok


def test_verify_reports_drift_and_rebuild_repairs_it(col: Collection) -> None:
    report = col.verify()
    assert report.ok and report.main_vectors == report.active_images
    (col.path / "main.index").write_bytes(b"garbage")
    broken = Collection.open(col.path)
    report = broken.verify()
    assert not report.ok and any("unreadable" in p for p in report.problems)
    with pytest.raises(CorruptCollectionError, match="lookalike rebuild"):
        broken.search_vector(col.store.vector(1), k=1)  # type: ignore[arg-type]
    rebuilt = Collection.open(col.path)
    rebuilt.rebuild()
    assert rebuilt.verify().ok and rebuilt.info().main_vectors == report.active_images


def test_verify_sees_vectors_missing_from_main(col: Collection) -> None:
    import faiss

    index = faiss.read_index(str(col.path / "main.index"))
    index.remove_ids(np.array([1, 2], dtype=np.int64))  # a main index that lost two images
    faiss.write_index(index, str(col.path / "main.index"))
    report = Collection.open(col.path).verify()
    assert any("2 active images are missing from main.index" in p for p in report.problems)


def test_stale_temporary_files_are_cleaned_by_the_next_writer(col: Collection) -> None:
    stale = col.path / ".main.index.999999.tmp"  # left by a writer killed mid-save
    stale.write_bytes(b"half an index")
    col.remove([1])
    assert not stale.exists()


def test_one_compaction_at_a_time(col: Collection) -> None:
    from filelock import FileLock

    with FileLock(str(col.path / ".compact.lock")):
        with pytest.raises(CollectionLockedError, match="being compacted"):
            col.compact()
        assert col.compact(wait=False) is None


def test_policy_decides_when_to_compact(col: Collection, sample_dir: Path, tmp_path: Path) -> None:
    col.live.policy = CompactionPolicy(delta_min=3, delta_fraction=0.0, tombstone_fraction=1.0)
    col.add(make_variants(sample_dir, tmp_path / "a", 2), workers=0, show_progress=False)
    assert col.info().delta_vectors == 2  # below delta_min: stays in the delta
    col.add(make_variants(sample_dir, tmp_path / "b", 2, start=2), workers=0,
            show_progress=False)
    assert col.info().delta_vectors == 0  # compacted at the end of the run


def test_concurrent_searches_while_writing_and_compacting(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    pool = make_variants(sample_dir, tmp_path / "pool", 24)
    stored = {i: col.store.vector(i) for i in range(1, col.info().images + 1)}
    removed_at: dict[int, float] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    checked = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        keys = list(stored)
        while not stop.is_set():
            try:
                began = time.monotonic()
                query = stored[keys[int(rng.integers(len(keys)))]]
                ids = [h.image_id for h in col.search_vector(query, k=8)]
                assert len(ids) == len(set(ids)), f"duplicate ids {ids}"
                dead = {i for i, t in removed_at.items() if t < began}
                assert not dead & set(ids), f"removed ids returned: {dead & set(ids)}"
                checked[0] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                return

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for thread in readers:
        thread.start()
    try:
        for step in range(6):
            col.add(pool[step * 4:(step + 1) * 4], workers=0, show_progress=False)
            victim = (step * 3) % len(stored) + 1
            if victim not in removed_at:
                col.remove([victim])
                removed_at[victim] = time.monotonic()
            if step % 2:
                col.compact()
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors, errors[0]
    assert checked[0] > 20
    assert col.verify().ok


def _synthetic(n: int, dim: int, seed: int) -> np.ndarray:
    # Clustered points of low intrinsic dimension (32), like CNN embeddings, in ``dim`` dims.
    basis = np.random.default_rng(0).standard_normal((32, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1).standard_normal((20, 32)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, 32)).astype(np.float32)
    x = x @ basis
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write(col: Collection, vectors: np.ndarray, tag: str) -> list[int]:
    from lookalike.storage import NewImage

    return col.store.write(
        NewImage(uri=f"/synthetic/{tag}{i}.jpg", size=1, mtime_ns=1, content_hash=f"{tag}{i}",
                 vector=v) for i, v in enumerate(vectors)
    )


def test_hnsw_results_before_and_after_a_merge_agree(tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "col", index="HNSW16")
    _write(col, _synthetic(3000, 1280, 1), "a")
    col.compact()
    added = _write(col, _synthetic(600, 1280, 2), "b")  # in the delta
    col.remove(added[:50] + list(range(1, 101)))  # tombstones in both indexes
    queries = _synthetic(50, 1280, 3)
    ids, vectors = map(np.concatenate, zip(*col.store.iter_vectors(), strict=True))

    def recall() -> float:
        exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
        found = [{h.image_id for h in col.search_vector(q, k=10, ef=64, qe=0)} for q in queries]
        return float(np.mean([len(f & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))

    before = recall()
    info = col.info()  # rows removed before the delta caught up never entered it
    assert info.delta_vectors == 550 and info.tombstones == 150
    col.compact()
    after = recall()
    assert col.info().delta_vectors == 0 and col.info().tombstones == 0
    assert before >= 0.95 and after >= 0.95, (before, after)
    assert abs(before - after) <= 0.01


def test_background_reload_keeps_the_old_main_until_the_new_one_is_loaded(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    # A server's reader: searches never load a new main index themselves.
    reader = Collection.open(col.path)
    reader.live.reload_in_background = True
    query = sample_dir / "coffee.jpg"
    before = _top(reader, query, k=6)
    gone = col.remove([before[1]])
    new = make_variants(sample_dir, tmp_path / "new", 2)
    col.add(new, workers=0, show_progress=False)
    assert col.compact() is not None  # elsewhere: swaps main.index, drops the removed vector
    old_main = reader.live.main_vectors
    after = _top(reader, query, k=6)  # still the old main, plus the delta and tombstones
    assert reader.live.main_vectors == old_main
    assert after == _top(col, query, k=6) and not set(gone) & set(after)
    assert reader.search(new[0], k=1)[0].uri == str(new[0])
    assert reader.live.reload_main() is True
    assert reader.live.main_vectors == col.live.main_vectors and reader.live.delta_vectors == 0
    assert reader.live.reload_main() is False
    assert _top(reader, query, k=6) == after


def test_a_reader_that_missed_a_removal_still_returns_k_results(
    col: Collection, sample_dir: Path
) -> None:
    # The reader last caught up before the removal; by its next search a compaction elsewhere
    # has dropped the removed vector, so no tombstone names it. Searches must look further.
    reader = Collection.open(col.path)
    reader.live.reload_in_background = True
    query = sample_dir / "coffee.jpg"
    before = _top(reader, query, k=5)
    col.remove([before[0], before[2]])
    col.compact()
    hits = reader.search(query, k=5)
    assert len(hits) == 5 and not {before[0], before[2]} & {h.image_id for h in hits}
