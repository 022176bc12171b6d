"""One contract, every metadata store: SQLite and a real PostgreSQL server.

Each test opens its stores through the real path (``new_store`` / ``open_store``, as a collection
does) on a fresh database: a SQLite file, or a fresh PostgreSQL schema. A second store opened on
the same database stands for another process. The last test checks that both stores answer the
same sequence of operations identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.storage import Decision, EventWrite, Store
from lookalike.where import Where
from stores import DIM, Opener, image, opener, unit_vectors


def test_write_then_read_back(store: Store) -> None:
    vectors = unit_vectors(3)
    before = time.time()
    ids = store.write([image("/a.jpg", vectors[0], metadata='{"tag": "cat", "n": 1}'),
                       image("/b.jpg", error="not an image"),
                       image("/c.jpg", vectors[2])])
    assert ids == sorted(ids) and len(set(ids)) == 3 and min(ids) >= 1
    records = store.get(ids + [10_000])
    assert set(records) == set(ids)
    a, b, c = (records[i] for i in ids)
    assert (a.uri, a.size, a.mtime_ns, a.content_hash, a.width, a.height, a.status, a.error) == (
        "/a.jpg", 1006, 1_700_000_000_123_456_789, "h-/a.jpg", 64, 48, "active", None)
    assert (b.status, b.error) == ("failed", "not an image") and c.status == "active"
    assert before - 1 <= a.added_at <= time.time() + 1
    assert store.get([]) == {}
    assert store.get([np.int64(ids[0])])[ids[0]] == a  # numpy ids, as an index returns them
    got = store.vector(ids[0])
    assert got is not None and got.dtype == np.float32 and np.array_equal(got, vectors[0])
    assert store.vector(ids[1]) is None and store.vector(10_000) is None
    batch = store.vectors([ids[2], ids[1], np.int64(ids[0]), 10_000])  # failed, unknown: left out
    assert set(batch) == {ids[0], ids[2]} and all(type(i) is int for i in batch)
    assert np.array_equal(batch[ids[0]], vectors[0]) and np.array_equal(batch[ids[2]], vectors[2])
    assert store.vectors([]) == {}
    assert store.max_id() == max(ids)
    assert store.counts() == {"active": 2, "failed": 1, "removed": 0}
    assert [r.uri for r in store.failures()] == ["/b.jpg"]
    assert set(store.file_states()) == {"/a.jpg", "/b.jpg", "/c.jpg"}


def test_empty_store(store: Store) -> None:
    assert store.max_id() == 0 and store.tombstones() == set()
    assert store.counts() == {"active": 0, "failed": 0, "removed": 0}
    assert store.file_states() == {} and store.failures() == []
    assert list(store.iter_vectors()) == [] and store.find_uri("/x") is None
    assert store.sample_vectors(5).shape == (0, DIM)
    assert store.write([]) == []


def test_find_uri_sees_only_the_active_row(store: Store) -> None:
    v = unit_vectors(2)
    [first] = store.write([image("/a.jpg", v[0])])
    [failed] = store.write([image("/bad.jpg")])
    found = store.find_uri("/a.jpg")
    assert found is not None and found.id == first
    assert store.find_uri("/bad.jpg") is None and store.find_uri("/nope.jpg") is None
    [second] = store.write([image("/a.jpg", v[1])])
    found = store.find_uri("/a.jpg")
    assert found is not None and found.id == second > first
    assert store.get([failed])[failed].status == "failed"


def test_ids_no_image_can_have_are_simply_not_found(store: Store) -> None:
    """Past 64 bits the drivers overflow (SQLite: OverflowError; psycopg: out of range)."""
    [image_id] = store.write([image("/a.jpg", unit_vectors(1)[0])])
    for never in (0, -1, 2**63, 10**30):
        assert store.get([never, image_id]).keys() == {image_id}
        assert store.vector(never) is None and store.metadata(never) is None
        assert store.vectors([never]) == {}


def test_file_names_of_any_bytes_round_trip(store: Store) -> None:
    """Names that are not UTF-8 reach Python as lone surrogates (os.fsdecode); the store keeps
    every one apart, finds it again, and gives back exactly the name it was given."""
    names = [os.fsdecode(b"/p/\xff\xfe.jpg"), os.fsdecode(b"/p/caf\xe9.jpg"), "/p/caf\xe9.jpg",
             "/p/\ufdd0.jpg", os.fsdecode(b"/p/\xef\xb7\x90\xff.jpg"), "/p/new\nline.jpg"]
    v = unit_vectors(len(names))
    ids = store.write([image(name, vector, content_hash=f"h{n}")
                       for n, (name, vector) in enumerate(zip(names, v, strict=True))])
    [failed] = store.write([image(os.fsdecode(b"/p/bad\x80.jpg"), content_hash="bad",
                                  error=os.fsdecode(b"cannot read \x80"))])
    assert [store.get(ids)[i].uri for i in ids] == names
    assert [store.find_uri(name).id for name in names] == ids
    assert set(store.file_states()) == {*names, os.fsdecode(b"/p/bad\x80.jpg")}
    [record] = store.failures()
    assert record.id == failed and record.error == os.fsdecode(b"cannot read \x80")
    [again] = store.write([image(names[0], v[1], content_hash="h")])  # retires the old row
    assert store.get([ids[0]])[ids[0]].status == "removed" and store.find_uri(names[0]).id == again


def test_one_live_row_per_uri(store: Store) -> None:
    v = unit_vectors(4)
    [old] = store.write([image("/a.jpg", v[0])])
    [new] = store.write([image("/a.jpg", v[1])])  # the file changed: a new row, the old retired
    rows = store.get([old, new])
    assert rows[old].status == "removed" and rows[new].status == "active"
    assert store.file_states()["/a.jpg"].id == new
    # The same uri twice in one batch: the later one wins, the earlier is retired at once.
    first, second = store.write([image("/b.jpg", v[2]), image("/b.jpg", v[3])])
    rows = store.get([first, second])
    assert rows[first].status == "removed" and rows[second].status == "active"
    # A failed file that later decodes replaces its failed row.
    [bad] = store.write([image("/c.jpg")])
    [good] = store.write([image("/c.jpg", v[0])])
    assert store.get([bad])[bad].status == "removed" and store.find_uri("/c.jpg").id == good
    assert {r.id for r in store.file_states().values()} == {new, second, good}
    assert store.tombstones() == {old, first}  # removed rows whose vectors are still stored
    assert store.counts() == {"active": 3, "failed": 0, "removed": 3}


def test_mark_removed_and_tombstones(store: Store) -> None:
    v = unit_vectors(3)
    ids = store.write([image(f"/{i}.jpg", v[i]) for i in range(3)])
    [failed] = store.write([image("/bad.jpg")])
    assert store.mark_removed([ids[0], ids[1], ids[0]]) == 2
    assert store.mark_removed([ids[0]]) == 0 and store.mark_removed([]) == 0
    assert store.mark_removed([failed]) == 1
    assert store.tombstones() == {ids[0], ids[1]}  # the failed row has no vector
    assert store.find_uri("/0.jpg") is None
    assert store.get([ids[0]])[ids[0]].status == "removed"
    assert store.counts() == {"active": 1, "failed": 0, "removed": 3}
    assert store.failures() == [] and set(store.file_states()) == {"/2.jpg"}
    [again] = store.write([image("/0.jpg", v[0])])  # a removed uri may come back
    assert store.find_uri("/0.jpg").id == again


def test_generation_moves_with_every_write_seen_by_another_connection(
    open_db: Opener,
) -> None:
    writer, reader = open_db(), open_db()
    seen = [reader.generation()]

    def changed() -> bool:
        seen.append(reader.generation())
        return seen[-1] > seen[-2]

    [a] = writer.write([image("/a.jpg", unit_vectors(1)[0])])
    assert changed()
    writer.set_metadata(a, '{"x": 1}')
    assert changed()
    writer.mark_removed([a])
    assert changed()
    writer.drop_tombstoned_vectors(writer.generation())
    assert changed()
    assert not changed()  # reading moves nothing
    assert reader.get([a])[a].status == "removed" and reader.tombstones() == set()


def test_iter_vectors_chunks_and_bounds(store: Store) -> None:
    v = unit_vectors(25, seed=3)
    ids = store.write([image(f"/{i:02d}.jpg", v[i]) for i in range(20)])
    ids += store.write([image("/failed.jpg")])
    ids += store.write([image(f"/{i:02d}.jpg", v[i]) for i in range(20, 25)])
    store.mark_removed([ids[3], ids[4]])
    by_id = {i: v[n if n < 20 else n - 1] for n, i in enumerate(ids) if n != 20}

    chunks = list(store.iter_vectors(chunk=7))
    assert [len(c[0]) for c in chunks] == [7, 7, 7, 2]
    got_ids = np.concatenate([c[0] for c in chunks])
    assert got_ids.dtype == np.int64 and list(got_ids) == sorted(set(by_id) - {ids[3], ids[4]})
    for chunk_ids, vectors in chunks:
        assert vectors.dtype == np.float32 and vectors.shape == (len(chunk_ids), DIM)
        assert all(np.array_equal(row, by_id[i]) for i, row in zip(chunk_ids, vectors, strict=True))
    everything = np.concatenate([c[0] for c in store.iter_vectors(active_only=False)])
    assert list(everything) == sorted(by_id)
    window = np.concatenate([c[0] for c in store.iter_vectors(after_id=ids[5], upto_id=ids[12],
                                                              chunk=3)])
    assert list(window) == ids[6:13]
    assert list(store.iter_vectors(after_id=store.max_id())) == []
    assert list(store.iter_vectors(after_id=ids[10], upto_id=ids[10])) == []


def test_drop_tombstoned_vectors_keeps_later_removals(store: Store) -> None:
    v = unit_vectors(3)
    ids = store.write([image(f"/{i}.jpg", v[i]) for i in range(3)])
    store.mark_removed([ids[0]])
    cutoff = store.generation()
    store.mark_removed([ids[1]])
    assert store.drop_tombstoned_vectors(cutoff) == 1
    assert store.tombstones() == {ids[1]}
    assert store.vector(ids[0]) is None and store.vector(ids[1]) is not None
    stored = np.concatenate([c[0] for c in store.iter_vectors(active_only=False)])
    assert list(stored) == [ids[1], ids[2]]
    assert store.drop_tombstoned_vectors(cutoff) == 0
    assert store.get([ids[0]])[ids[0]].status == "removed"  # the row itself stays


def test_changes_are_what_happened_since_a_generation(store: Store) -> None:
    v = unit_vectors(6, seed=5)
    start = store.generation()
    a, b = store.write([image("/a.jpg", v[0]), image("/b.jpg", v[1])])
    after_first = store.generation()
    first = store.changes(start, after_first)
    assert list(first.ids) == [a, b] and list(first.removed) == []
    assert first.vectors is not None and np.array_equal(first.vectors, v[:2])

    [failed] = store.write([image("/bad.jpg", error="broken")])
    [c] = store.write([image("/a.jpg", v[2])])  # a changed file: a retired, c new
    store.mark_removed([b])
    end = store.generation()
    rest = store.changes(after_first, end)
    assert list(rest.ids) == [c] and sorted(rest.removed) == [a, b]
    assert failed not in set(rest.ids) | set(rest.removed)  # never searchable: no change
    # A row shows its latest change only: a reader catching up from the start sees a and b
    # retired, never added.
    everything = store.changes(start, end, vectors=False)
    assert everything.vectors is None and list(everything.ids) == [c]
    assert sorted(everything.removed) == [a, b]
    assert not store.changes(end, end) and not store.changes(end, end + 5)
    def built(upto: int) -> list[int]:
        return [int(i) for ids, _ in store.iter_vectors(upto_generation=upto) for i in ids]

    assert built(end - 2) == []  # c came with generation end - 1; a and b are retired
    assert built(end - 1) == built(end) == [c]


def test_changes_come_in_pages_in_commit_order(store: Store) -> None:
    v = unit_vectors(30, seed=6)
    start = store.generation()
    ids = [i for n in range(0, 30, 3)
           for i in store.write([image(f"/{n + k}.jpg", v[n + k]) for k in range(3)])]
    store.mark_removed(ids[::4])
    found = store.changes(start, store.generation(), chunk=4)
    kept = [i for n, i in enumerate(ids) if n % 4]
    assert list(found.ids) == kept and sorted(found.removed) == ids[::4]
    assert found.vectors is not None
    assert np.array_equal(found.vectors, v[[n for n in range(30) if n % 4]])


def test_metadata(store: Store) -> None:
    v = unit_vectors(2)
    meta = {"title": "Kätzchen 🐱", "tags": ["a", "b"], "n": 3, "nested": {"ok": True}}
    a, b = store.write([image("/a.jpg", v[0], metadata=json.dumps(meta, ensure_ascii=False)),
                        image("/b.jpg", v[1])])
    assert json.loads(store.metadata(a) or "") == meta
    assert store.metadata(b) is None and store.metadata(10_000) is None
    store.set_metadata(b, '{"first": 1}')
    store.set_metadata(b, '{"second": 2}')  # replaces
    assert json.loads(store.metadata(b) or "") == {"second": 2}


def test_event_batches_commit_whole_with_their_positions(open_db: Opener) -> None:
    store, other = open_db(), open_db()
    vectors = unit_vectors(3)
    [a, b] = store.write([image("s3://b/a.jpg", vectors[0]), image("/b.jpg", vectors[1])])
    generation = store.generation()
    new = dataclasses.replace(image("s3://b/c é.jpg", vectors[2]), etag="9f0e")
    ids, retired = store.apply_events(EventWrite(
        images=[new], retire=[b, 999_999], metadata={a: '{"sku": "A-1"}'},
        positions={"s3://b/c é.jpg": "0A", "/b.jpg": "0B", "s3://b/gone.jpg": "0C"}))
    assert retired == [b] and store.generation() == generation + 1  # one transaction
    assert other.event_positions(["s3://b/c é.jpg", "/b.jpg", "s3://b/gone.jpg", "/x"]) == {
        "s3://b/c é.jpg": "0A", "/b.jpg": "0B", "s3://b/gone.jpg": "0C"}
    assert json.loads(other.metadata(a) or "") == {"sku": "A-1"}
    live = other.live_rows(["s3://b/a.jpg", "/b.jpg", "s3://b/c é.jpg"])
    assert set(live) == {"s3://b/a.jpg", "s3://b/c é.jpg"} and live["s3://b/c é.jpg"].id == ids[0]
    assert live["s3://b/c é.jpg"].etag == "9f0e" and live["s3://b/a.jpg"].etag is None
    changes = other.changes(generation, other.generation())
    assert changes.ids.tolist() == ids and changes.removed.tolist() == [b]
    # Positions move on; nothing else needs to change with them.
    store.apply_events(EventWrite(positions={"/b.jpg": "0D"}))
    assert other.event_positions(["/b.jpg"]) == {"/b.jpg": "0D"}
    # A batch that fails part way (here: a vector that is not numbers) leaves nothing behind.
    with pytest.raises(ValueError):
        store.apply_events(EventWrite(images=[image("/d.jpg", np.array(["x"] * DIM))],
                                      retire=[a], positions={"/d.jpg": "01"}))
    assert other.find_uri("/d.jpg") is None and other.event_positions(["/d.jpg"]) == {}
    assert other.find_uri("s3://b/a.jpg") is not None


def test_vector_by_hash(store: Store) -> None:
    v = unit_vectors(2)
    [a] = store.write([image("/a.jpg", v[0], content_hash="same")])
    got = store.vector_by_hash("same")
    assert got is not None and np.array_equal(got, v[0])
    assert store.vector_by_hash("other") is None
    store.write([image("/bad.jpg", content_hash="broken")])
    assert store.vector_by_hash("broken") is None
    store.mark_removed([a])  # its vector is still stored (a tombstone): still reusable
    got = store.vector_by_hash("same")
    assert got is not None and np.array_equal(got, v[0])


def test_same_bytes_groups_active_images_by_content(store: Store) -> None:
    v = unit_vectors(5)
    a, b, c, _, e = store.write([image("/a.jpg", v[0], content_hash="x"),
                                 image("/b.jpg", v[1], content_hash="x"),
                                 image("/c.jpg", v[2], content_hash="x"),
                                 image("/d.jpg", v[3], content_hash="y"),
                                 image("/e.jpg", v[4], content_hash="z")])
    store.write([image("/f.jpg", content_hash="z")])  # failed: not an image to group
    assert store.same_bytes() == [[a, b, c]]
    store.mark_removed([b, c])
    assert store.same_bytes() == []
    [g] = store.write([image("/g.jpg", v[4], content_hash="z")])
    assert store.same_bytes() == [[e, g]]


def test_decisions_are_kept_by_pair_replaced_and_forgotten(open_db: Opener) -> None:
    store, other = open_db(), open_db()
    generation = store.generation()
    store.decide([Decision.of("b", "a", "distinct"), Decision.of("a", "c", "duplicate", "c")])
    assert [(d.first, d.second, d.verdict, d.keep) for d in other.decisions()] == [
        ("a", "b", "distinct", None), ("a", "c", "duplicate", "c")]
    assert store.generation() == generation  # no image changed: readers have nothing to do
    store.decide([Decision.of("a", "b", "duplicate", "a")], forget=[("c", "a")])
    assert [(d.first, d.second, d.verdict, d.keep) for d in other.decisions()] == [
        ("a", "b", "duplicate", "a")]
    assert all(d.decided_at > 0 for d in other.decisions())


def test_sample_vectors(store: Store) -> None:
    v = unit_vectors(50, seed=5)
    ids = store.write([image(f"/{i:02d}.jpg", v[i]) for i in range(50)])
    store.mark_removed(ids[:10])
    sample = store.sample_vectors(15, seed=1)
    assert sample.shape == (15, DIM) and sample.dtype == np.float32
    rows = {v[i].tobytes(): i for i in range(10, 50)}
    picked = [rows[row.tobytes()] for row in sample]  # active vectors only, in id order
    assert picked == sorted(set(picked))
    assert np.array_equal(store.sample_vectors(15, seed=1), sample)
    assert not np.array_equal(store.sample_vectors(15, seed=2), sample)
    assert np.array_equal(store.sample_vectors(100), v[10:])


@pytest.mark.postgres
def test_both_stores_answer_alike(tmp_path: Path, pg_uri: str) -> None:
    """The same operations give the same answers, ids included, from SQLite and PostgreSQL."""
    openers = [opener("sqlite", tmp_path / "s", None),
               opener("postgresql", tmp_path / "p", pg_uri)]
    (tmp_path / "s").mkdir()
    (tmp_path / "p").mkdir()
    stores = [next(o)() for o in openers]
    v = unit_vectors(40, seed=9)
    rng = np.random.default_rng(4)
    for step in range(12):
        batch = [image(f"/{int(rng.integers(0, 30)):02d}.jpg",
                       v[int(rng.integers(0, 40))] if rng.random() > 0.15 else None,
                       metadata=json.dumps({"step": step}) if rng.random() > 0.7 else None)
                 for _ in range(int(rng.integers(0, 6)))]
        results = [s.write(batch) for s in stores]
        assert results[0] == results[1]
        if step % 3 == 2:
            victims = rng.choice(max(s.max_id() for s in stores), 4) + 1
            assert stores[0].mark_removed(victims) == stores[1].mark_removed(victims)

    def view(s: Store) -> tuple:
        top = s.max_id()
        records = s.get(range(1, top + 1))
        strip = {i: dataclasses.replace(r, added_at=0.0) for i, r in records.items()}
        vectors = [(ids.tolist(), vecs.tobytes()) for ids, vecs in s.iter_vectors(chunk=5)]
        return (top, strip, s.tombstones(), s.counts(), [r.id for r in s.failures()],
                {u: r.id for u, r in s.file_states().items()}, vectors,
                s.sample_vectors(7, seed=3).tobytes(),
                [json.loads(s.metadata(i) or "null") for i in range(1, top + 1)],
                {i: {k: v for k, v in f.items() if k != "added"}
                 for i, f in s.fields(range(1, top + 1)).items()},
                s.field_keys(), s.facets(["step", "name"], top=3),
                [s.matching(Where.parse(w)).tolist() for w in (
                    "step >= 4", "not exists step", "name like '1*' or step in [1, 2]")])

    assert view(stores[0]) == view(stores[1])
    for running in openers:
        running.close()


def test_retire_says_which_rows_it_retired(open_db: Opener) -> None:
    store, other = open_db(), open_db()  # another process's connection to the same database
    v = unit_vectors(3)
    a, b, c = store.write([image(f"/{i}.jpg", v[i]) for i in range(3)])
    [failed] = store.write([image("/bad.jpg")])
    assert store.retire([b, a, a, 10_000]) == [a, b]  # ascending, once each, unknown ids left out
    assert other.retire([a, b, c, failed]) == [c, failed]  # already retired: not reported again
    assert store.retire([a, c]) == [] and store.retire([]) == []
    assert store.counts() == {"active": 0, "failed": 0, "removed": 4}


# -- fields and filters ----------------------------------------------------------------------
