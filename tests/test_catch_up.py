"""Every process's index is a function of the store at a generation: catch-up follows the
commit sequence (never "ids above the largest I know"), index files say which generation they
hold, and `verify` finds what is really wrong — down to a damaged database page."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import make_variants
from lookalike import Collection
from lookalike.errors import CorruptCollectionError


def _finds_itself(col: Collection, image_id: int) -> bool:
    vector = col.store.vector(image_id)
    assert vector is not None
    return col.search_vector(vector, k=1, qe=0)[0].image_id == image_id


def test_a_write_by_another_process_is_kept_when_this_one_writes_next(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    # Bug 1: a server (this handle) caught up, another process adds X, then the server takes
    # an upload Y and saves its delta. X must be searchable here and after a fresh open.
    x, y = make_variants(sample_dir, tmp_path / "new", 2, seed=11)
    col.search_vector(col.store.vector(1), k=1)  # type: ignore[arg-type]
    with Collection.open(col.path) as other:
        other.add([x], workers=0, show_progress=False)
    col.add_bytes(y.read_bytes())
    col.live.save_delta()
    x_id = col.find(x)
    assert x_id is not None and _finds_itself(col, x_id)
    col.close()
    with Collection.open(col.path) as fresh:
        assert _finds_itself(fresh, x_id)
        assert fresh.search(x, k=1, qe=0)[0].uri == str(x)
        assert fresh.verify().ok, fresh.verify().problems


def test_an_id_committed_after_a_larger_one_is_still_caught_up(col: Collection) -> None:
    # Ids may commit out of order across writers (PostgreSQL writers on other machines): the
    # catch-up follows generations. Here a writer commits a smaller id after a larger one that
    # this process has already indexed.
    largest = col.store.max_id()
    first, late = np.zeros((2, col.dim), np.float32)
    first[5] = late[7] = 1.0
    _commit_row(col.path, largest + 50, first)
    assert col.search_vector(first, k=1, qe=0)[0].image_id == largest + 50
    _commit_row(col.path, largest + 10, late)
    assert col.search_vector(late, k=1, qe=0)[0].image_id == largest + 10
    with Collection.open(col.path) as fresh:
        assert fresh.search_vector(late, k=1, qe=0)[0].image_id == largest + 10


def _commit_row(folder: Path, image_id: int, vector: np.ndarray) -> None:
    """Commit an active image with this id as a writer does: one transaction, its generation."""
    with sqlite3.connect(folder / "lookalike.db", isolation_level=None) as db:
        db.execute("BEGIN IMMEDIATE")
        [seq] = db.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation' "
                           "RETURNING CAST(value AS INTEGER)").fetchone()
        db.execute("INSERT INTO images (id, uri, status, added_at, seq) VALUES "
                   "(?, ?, 'active', 0, ?)", (image_id, f"/{image_id}.jpg", seq))
        db.execute("INSERT INTO vectors VALUES (?, ?)", (image_id, vector.tobytes()))
        db.execute("COMMIT")


def test_verify_reports_a_gap_in_a_saved_delta(col: Collection, sample_dir: Path,
                                                tmp_path: Path) -> None:
    col.add(make_variants(sample_dir, tmp_path / "new", 3, seed=12), workers=0,
            show_progress=False)
    assert col.verify().ok
    import faiss

    path = col.path / "delta.index"
    data = path.read_bytes()
    footer = data[-32:]
    index = faiss.read_index(str(path))
    index.remove_ids(np.array([col.store.max_id()], np.int64))  # a delta that lost one image
    faiss.write_index(index, str(path))
    path.write_bytes(path.read_bytes() + footer)
    problems = Collection.open(col.path).verify().problems
    assert any("1 active images are missing from delta.index" in p for p in problems)


def test_verify_reports_a_vector_that_is_not_finite(col: Collection) -> None:
    nan = np.full(col.dim, np.nan, np.float32).tobytes()
    with sqlite3.connect(col.path / "lookalike.db") as db:
        db.execute("UPDATE vectors SET vector = ? WHERE image_id = 2", (nan,))
    problems = Collection.open(col.path).verify().problems
    assert any("not finite unit vectors (e.g. [2])" in p for p in problems)


def test_verify_reports_a_damaged_database_page_and_rebuild_refuses(col: Collection) -> None:
    col.close()
    database = col.path / "lookalike.db"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'images_hash'"
                          ).fetchone()[0]
    with open(database, "r+b") as fh:  # one index page overwritten with random bytes
        fh.seek((root - 1) * page)
        fh.write(np.random.default_rng(0).bytes(page))
    damaged = Collection.open(col.path)
    problems = damaged.verify().problems
    assert any("lookalike.db is damaged" in p and "backup" in p for p in problems)
    with pytest.raises(CorruptCollectionError, match="Not rebuilding: .*damaged"):
        damaged.rebuild()


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_missing_or_empty_database_is_an_error_not_a_new_collection(
    col: Collection, damage: str
) -> None:
    col.close()
    database = col.path / "lookalike.db"
    for extra in ("-wal", "-shm"):
        database.with_name(database.name + extra).unlink(missing_ok=True)
    if damage == "deleted":
        database.unlink()
    else:
        database.write_bytes(b"")
    with pytest.raises(CorruptCollectionError, match="Restore it from a backup"):
        Collection.open(col.path)
    assert not database.is_file() or database.stat().st_size == 0  # nothing made in its place


def test_a_collection_written_before_generations_opens_complete(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    added = make_variants(sample_dir, tmp_path / "new", 3, seed=13)
    col.add(added, workers=0, show_progress=False)  # some in main.index, some in the delta
    ids = [int(i) for chunk, _ in col.store.iter_vectors() for i in chunk]
    col.close()
    # Make it look like version 1 wrote it: no footers, no seq or etag column.
    for name in ("main.index", "delta.index"):
        path = col.path / name
        path.write_bytes(path.read_bytes()[:-32])
    with sqlite3.connect(col.path / "lookalike.db") as db:
        db.execute("DROP INDEX images_seq")
        db.execute("ALTER TABLE images DROP COLUMN seq")
        db.execute("ALTER TABLE images DROP COLUMN etag")
        db.execute("DROP TABLE event_positions")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Collection.open(col.path) as old:
        assert sorted(old.live.live_ids().tolist()) == sorted(ids)  # each once
        assert all(_finds_itself(old, i) for i in ids)
        assert old.verify().ok, old.verify().problems
        old.compact()
        assert old.verify().ok and sorted(old.live.live_ids().tolist()) == sorted(ids)
