"""The fields of images in both stores: written with every row, metadata change and
retirement; filtered by SQL that agrees with the expression language on random expressions;
counted into facets and keys; and filled in when an older store is opened."""

from __future__ import annotations

import dataclasses
import json
import random
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.storage import EventWrite, Store, new_store, open_store
from lookalike.where import Where, WhereError
from random_filters import KEYS, random_expression, random_metadata
from stores import DIM, image, unit_vectors


def test_fields_follow_the_row_its_file_and_its_metadata(store: Store) -> None:
    v = unit_vectors(4)
    before = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    a, b, c, failed = store.write([
        dataclasses.replace(image("/p/trip/IMG_1.JPG", v[0], metadata=json.dumps(
            {"album": "trip", "tags": ["sea", "sun", "sea"], "stars": 4, "ok": True,
             "camera": {"lens": "35mm"}, "make": "Mine", "none": None})),
            file_fields={"format": "mpo-as-jpeg", "make": "Canon\x00", "lat": -33.5}),
        image("s3://bucket/dir/scan.tif", v[1]),
        image("/p/README", v[2]),
        image("/p/broken.png")])
    fields = store.fields([a, b, c, failed, 10_000])
    assert set(fields) == {a, b, c}  # a failed image is never searched: it has none
    added = fields[a].pop("added")[0]
    assert isinstance(added, str) and before <= added <= "9999"
    assert fields[a] == {
        "album": ["trip"], "camera.lens": ["35mm"], "folder": ["/p/trip"],
        "format": ["mpo-as-jpeg"], "height": [48.0], "lat": [-33.5], "make": ["Mine"],
        "modified": ["2023-11-14T22:13:20"], "name": ["IMG_1.JPG"], "ok": [1.0],
        "path": ["/p/trip/IMG_1.JPG"], "size": [1017.0], "stars": [4.0], "tags": ["sea", "sun"],
        "width": [64.0]}
    assert (fields[b]["folder"], fields[b]["name"], fields[b]["format"]) == (
        ["s3://bucket/dir"], ["scan.tif"], ["tiff"])
    assert "format" not in fields[c] and fields[c]["folder"] == ["/p"]

    generation = store.generation()
    store.set_metadata_many({b: '{"album": "work", "format": "raw"}', c: '{"n": [1, "1"]}',
                             failed: '{"album": "x"}'})
    assert store.generation() == generation + 1  # one transaction
    fields = store.fields([a, b, c, failed])
    assert (fields[b]["album"], fields[b]["format"]) == (["work"], ["raw"])
    assert fields[c]["n"] == [1.0, "1"] and failed not in fields
    assert store.fields([b, c], keys=["album", "n"]) == {b: {"album": ["work"]},
                                                       c: {"n": [1.0, "1"]}}
    assert store.fields([b, c], keys=[]) == {}
    store.set_metadata(b, "{}")
    assert "album" not in store.fields([b])[b] and store.fields([b])[b]["format"] == ["tiff"]
    store.apply_events(EventWrite(metadata={a: '{"album": "moved"}'}))
    assert store.fields([a])[a]["album"] == ["moved"] and "tags" not in store.fields([a])[a]
    [a2] = store.write([image("/p/trip/IMG_1.JPG", v[3])])  # the file changed: a retired
    store.retire([c])
    assert set(store.fields([a, a2, b, c])) == {a2, b}
    assert dict(store.field_keys()) == {k: 2 for k in (
        "added", "folder", "format", "height", "modified", "name", "path", "size", "width")}


def test_automatic_formats_and_times() -> None:
    from lookalike.storage.fields import automatic, extension_format, folder_and_name, utc_time


    assert [extension_format(n) for n in ("a.jpg", "a.JPEG", "a.jpe", "a.jfif", "a.TIF",
                                          "a.tiff", "a.PNG", "a.webp", "a", ".hidden")] == [
        "jpeg", "jpeg", "jpeg", "jpeg", "tiff", "tiff", "png", "webp", None, None]
    assert folder_and_name("s3://b/k/x.jpg") == ("s3://b/k", "x.jpg")
    assert folder_and_name("/x.jpg") == ("/", "x.jpg")
    assert utc_time(0) == "1970-01-01T00:00:00" and utc_time(1e20) is None
    fields = automatic("/a/b.png", None, -10**9, None, None, 86400.5, '{"taken": "2021"}')
    assert fields == {"path": ["/a/b.png"], "folder": ["/a"], "name": ["b.png"],
                      "modified": ["1969-12-31T23:59:59"], "added": ["1970-01-02T00:00:00"],
                      "taken": ["2021"], "format": ["png"]}


def test_matching_counts_facets_and_keys(store: Store) -> None:
    v = unit_vectors(6)
    ids = store.write([image(f"/p/{n}.jpg", v[n], metadata=json.dumps(m)) for n, m in enumerate([
        {"tenant": "t1", "bucket": 5, "tags": ["a", "b"]},
        {"tenant": "t1", "bucket": 7, "tags": ["b"]},
        {"tenant": "t2", "bucket": 7, "tags": "b"},
        {"tenant": "t3", "bucket": "7"},
        {"tenant": "t1", "bucket": 9, "tags": ["a"]},
        {"tenant": "t1"}])])
    store.retire([ids[4]])

    def matching(text: str) -> list[int]:
        found = store.matching(Where.parse(text))
        assert found.dtype == np.int64 and store.count_matching(Where.parse(text)) == len(found)
        return [ids.index(i) for i in found]

    assert matching('tenant = "t1"') == [0, 1, 5]
    assert matching("bucket between 6 and 9") == [1, 2]  # "7" is text: no number
    assert matching("tenant = t1 and tags = b") == [0, 1]
    assert matching("tags in [a, c] or bucket = 7") == [0, 1, 2]
    assert matching("not exists tags") == [3, 5] and matching("tenant != t1") == [2, 3]
    assert matching("name like '?.jpg' and not bucket < 6") == [1, 2, 3, 5]
    assert matching("format = png") == []
    assert store.facets(["tenant", "bucket", "tags", "nothing"], top=2) == {
        "tenant": [("t1", 3), ("t2", 1)], "bucket": [(7.0, 2), (5.0, 1)],
        "tags": [("b", 3), ("a", 1)], "nothing": []}
    assert store.facets(["bucket"], top=3) == {"bucket": [(7.0, 2), (5.0, 1), ("7", 1)]}
    assert store.facets(["tenant"], Where.parse("tags = b"), top=5) == {
        "tenant": [("t1", 2), ("t2", 1)]}
    assert store.field_keys()[:1] == [("added", 5)]
    assert dict(store.field_keys())["tags"] == 3 and dict(store.field_keys())["bucket"] == 4


def test_a_filter_reaches_the_store_parsed_or_not_at_all(store: Store) -> None:
    [a] = store.write([image("/a.jpg", unit_vectors(1)[0], metadata='{"k": "v"}')])
    assert store.matching("k = v").tolist() == [a]  # type: ignore[arg-type]  # parsed first
    with pytest.raises(WhereError):
        store.matching("k = = v")  # type: ignore[arg-type]  # refused before any SQL
    hostile = Where.parse("`k'); DROP TABLE images; --` = \"v'; DELETE FROM fields; --\" "
                          "or k like \"%_[]*\"")
    assert store.matching(hostile).tolist() == [] and store.count_matching(hostile) == 0
    assert store.matching(Where.parse("k = v")).tolist() == [a]


@pytest.mark.parametrize("plans", ["measured", "tiny"])
def test_random_filters_pick_exactly_the_images_whose_fields_pass(
    store: Store, plans: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store's SQL and Where.matches over the store's own fields agree on every
    expression, whatever the metadata: strings, numbers, booleans, lists, nulls, missing keys;
    and whichever way the store phrases its queries ("tiny": thresholds that 60 images cross,
    as a million do)."""
    from lookalike.storage import filtering

    if plans == "tiny":
        monkeypatch.setattr(filtering, "CAP", 4)
        monkeypatch.setattr(filtering, "PROBE_COST", 1)
        monkeypatch.setattr(filtering, "FACET_DRIVE", 5)

    rng = random.Random(18)
    v = unit_vectors(64, seed=18)
    names = ["x.jpg", "x.png", "a_b.JPG", "[x].gif", "x y.jpeg", "50%.tif"]
    ids = store.write([image(f"/p/{n}/{rng.choice(names)}", v[n] if n % 13 else None,
                             metadata=random_metadata(rng)) for n in range(60)])
    store.retire(rng.sample(ids, 5))
    store.set_metadata_many({i: random_metadata(rng) for i in rng.sample(ids, 10)})
    fields = store.fields(ids)
    assert all(store.get([i])[i].status == "active" for i in fields)
    keys = {}  # the contract of field_keys, from the fields themselves
    for image_fields in fields.values():
        for key in image_fields:
            keys[key] = keys.get(key, 0) + 1
    assert dict(store.field_keys()) == keys
    started = time.perf_counter()
    for n in range(300):
        where = Where.parse(random_expression(rng))
        expected = [i for i in sorted(fields) if where.matches(fields[i])]
        assert store.matching(where).tolist() == expected, where
        if n % 5 == 0:
            assert store.count_matching(where) == len(expected), where
        if n % 20 == 0:
            key = rng.choice(KEYS[:6])
            counted: dict[object, int] = {}
            for i in expected:
                for value in fields[i].get(key, []):
                    counted[value] = counted.get(value, 0) + 1
            ranked = sorted(counted.items(), key=lambda p: (-p[1], isinstance(p[0], str), p[0]))
            assert store.facets([key], where, top=4) == {key: ranked[:4]}, where
    assert time.perf_counter() - started < 10


def test_a_schema_4_database_gets_its_fields_when_opened(tmp_path: Path) -> None:
    new_store("sqlite", tmp_path, DIM)
    store = open_store(None, folder=tmp_path, dim=DIM)
    v = unit_vectors(4)
    ids = store.write([image("/p/a.jpg", v[0], metadata='{"album": "x", "n": [1, 2]}'),
                       image("/p/b.png", v[1]), image("/p/c.jpg", v[2], metadata='{"n": 3}'),
                       image("/p/bad.jpg")])
    store.retire([ids[2]])
    fields, keys = store.fields(ids), store.field_keys()
    store.close()
    db = sqlite3.connect(tmp_path / "lookalike.db")
    db.executescript("DROP TABLE fields; DROP TABLE field_counts; "  # as version 4 left it
                     "ALTER TABLE images DROP COLUMN file_fields; "
                     "UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    db.close()
    store = open_store(None, folder=tmp_path, dim=DIM)
    assert set(fields) == {ids[0], ids[1]}
    assert store.fields(ids) == fields and store.field_keys() == keys
    assert store.matching(Where.parse("n = 2 and format = jpeg")).tolist() == [ids[0]]
    [d] = store.write([dataclasses.replace(image("/p/d.jpg", v[3]), file_fields={"make": "X"})])
    assert store.fields([d])[d]["make"] == ["X"]
    store.close()
