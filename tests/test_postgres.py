"""The PostgreSQL metadata store beyond the shared contract: store URIs, a collection of real
photos on it, passwords kept out of the manifest, clear errors, migrations opened by many at
once, and writers in two processes (or two folders) at the same time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from conftest import free_port
from lookalike import Collection
from lookalike.errors import (
    CollectionExistsError,
    CorruptCollectionError,
    StoreUnavailableError,
    UsageError,
)
from lookalike.storage import Decision, EventWrite, NewImage, open_store
from lookalike.storage.migrations import STEPS
from lookalike.storage.postgres import PostgresStore
from lookalike.storage.uri import PostgresURI, connection_uri
from pgserver import PASSWORD, PostgresServer

pytestmark = pytest.mark.postgres

WRITER = Path(__file__).with_name("pg_writer.py")


# -- store URIs (no server needed) -----------------------------------------------------------


def test_uri_keeps_its_password_out_of_the_record() -> None:
    uri = PostgresURI.parse("postgresql://me:p%40ss%2Fw@db.example:5433/photos"
                            "?sslmode=require&schema=my_photos")
    assert (uri.user, uri.password, uri.hosts, uri.dbname, uri.schema) == (
        "me", "p@ss/w", "db.example:5433", "photos", "my_photos")
    assert uri.recorded() == ("postgresql://me@db.example:5433/photos"
                              "?sslmode=require&schema=my_photos")
    assert uri.conninfo() == "postgresql://me:p%40ss%2Fw@db.example:5433/photos?sslmode=require"
    assert uri.where() == "db.example:5433/photos"
    assert PostgresURI.parse("postgres://u@h/d?password=x").recorded() == "postgresql://u@h/d"
    with pytest.raises(UsageError, match="schema name"):
        PostgresURI.parse("postgresql://u@h/d?schema=Robert');DROP")
    with pytest.raises(UsageError, match=r"u:\*\*\*@"):
        PostgresURI.parse("mysql://u:secret@h/d")


def test_connection_uri_rules() -> None:
    recorded = "postgresql://me@h:5432/db?schema=s1"
    # Nothing given: the manifest's URI (libpq finds the password).
    assert connection_uri(recorded, None, None).conninfo() == "postgresql://me@h:5432/db"
    # The setting lends its password for the same server, database and user only.
    lent = connection_uri(recorded, None, "postgresql://me:pw@h:5432/db")
    assert lent.password == "pw" and lent.schema == "s1"
    assert connection_uri(recorded, None, "postgresql://me:pw@other/db").password is None
    assert connection_uri(recorded, None, "postgresql://you:pw@h:5432/db").password is None
    # An explicit URI moves it, keeping the recorded schema unless it names one.
    moved = connection_uri(recorded, "postgresql://me:pw@new:6000/db", None)
    assert (moved.hosts, moved.password, moved.schema) == ("new:6000", "pw", "s1")
    assert connection_uri(recorded, "postgresql://me@h/db?schema=s2", None).schema == "s2"
    with pytest.raises(UsageError, match="cannot move it"):
        connection_uri(recorded, "sqlite", None)


def test_a_sqlite_collection_refuses_a_postgres_uri(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="applies to new collections only") as caught:
        open_store(None, folder=tmp_path, dim=8,
                   given="postgresql://me:topsecret@h/db")
    assert "topsecret" not in str(caught.value)


# -- a collection on PostgreSQL --------------------------------------------------------------


def test_collection_indexes_and_searches_real_photos(photos: Path, tmp_path: Path,
                                                     pg_uri: str) -> None:
    folder = tmp_path / "col"
    with Collection.create(folder, store=pg_uri) as col:
        report = col.index([photos], workers=0, show_progress=False)
        assert report.added == len(list(photos.glob("*.jpg"))) and not report.failed
        hits = col.search(photos / "astronaut.jpg", k=3)
        assert hits[0].uri == str(photos / "astronaut.jpg") and hits[0].score > 0.99
        coffee = col.find(photos / "coffee.jpg")
        assert coffee is not None
        col.remove([coffee])
        assert coffee not in {h.image_id for h in col.search(photos / "coffee.jpg", k=18)}
        details, created = col.add_bytes((photos / "chelsea.jpg").read_bytes(),
                                         metadata={"who": "Chelsea", "tags": ["cat"]})
        assert created and details.metadata == {"who": "Chelsea", "tags": ["cat"]}
        expected = _ranked(col, photos / "chelsea.jpg")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["store"] == PostgresURI.parse(pg_uri).recorded()
    assert not (folder / "lookalike.db").exists()

    with Collection.open(folder) as col:  # reconnects with the manifest's URI
        assert _ranked(col, photos / "chelsea.jpg") == expected
        info = col.info()
        assert info.images == report.added and info.removed == 1
        assert col.compact() is not None and col.verify().ok
        assert _ranked(col, photos / "chelsea.jpg") == expected


def _ranked(col: Collection, query: Path) -> list[tuple[float, int]]:
    # The upload duplicates chelsea.jpg: equal scores may come in either order.
    return sorted((-round(h.score, 5), h.image_id) for h in col.search(query, k=5))


def test_cli_indexes_into_postgres(photos: Path, tmp_path: Path, pg_uri: str) -> None:
    folder = tmp_path / "col"
    lookalike = [sys.executable, "-m", "lookalike"]
    done = subprocess.run([*lookalike, "index", str(photos), "-c", str(folder), "--store", pg_uri,
                           "--workers", "0", "--no-progress", "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == len(list(photos.glob("*.jpg")))
    done = subprocess.run([*lookalike, "search", str(photos / "rocket.jpg"), "-c", str(folder),
                           "-k", "1", "--json"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert str(photos / "rocket.jpg") in done.stdout
    done = subprocess.run([*lookalike, "info", "-c", str(folder)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert f"metadata    {PostgresURI.parse(pg_uri).recorded()}" in done.stdout, done.stderr


def test_password_comes_from_the_uri_env_or_libpq_never_the_manifest(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if postgres.password_url is None:
        pytest.skip("needs the throwaway server's password-only role (not an existing server)")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    with_password = postgres.password_url.replace("@", f":{quote(PASSWORD, safe='')}@", 1)
    schema = postgres.fresh_schema()
    folder = tmp_path / "col"
    try:
        Collection.create(folder, store=postgres.uri(schema, url=with_password)).close()
        manifest = (folder / "manifest.json").read_text()
        assert PASSWORD not in manifest and quote(PASSWORD, safe="") not in manifest
        where = postgres.password_url.split("@")[1]
        with pytest.raises(StoreUnavailableError, match="PGPASSWORD") as caught:
            Collection.open(folder)
        assert where in str(caught.value) and "lookalike_pw" in str(caught.value)

        Collection.open(folder, store=with_password).close()  # explicit, schema from manifest
        monkeypatch.setenv("LOOKALIKE_STORE", with_password)
        Collection.open(folder).close()
        monkeypatch.delenv("LOOKALIKE_STORE")
        monkeypatch.setenv("PGPASSWORD", PASSWORD)
        Collection.open(folder).close()
        monkeypatch.delenv("PGPASSWORD")
        pgpass = tmp_path / "pgpass"
        host, port = where.split("/")[0].split(":")
        pgpass.write_text(f"{host}:{port}:*:lookalike_pw:{PASSWORD}\n")
        pgpass.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(pgpass))
        Collection.open(folder).close()
    finally:
        postgres.drop_schema(schema)


def test_unreachable_server_is_one_clear_error(tmp_path: Path, pg_uri: str) -> None:
    folder = tmp_path / "col"
    Collection.create(folder, store=pg_uri).close()
    manifest = json.loads((folder / "manifest.json").read_text())
    port = free_port()  # nothing listens there
    manifest["store"] = f"postgresql://postgres@127.0.0.1:{port}/nowhere?schema=s"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}/nowhere"):
        Collection.open(folder)
    done = subprocess.run([sys.executable, "-m", "lookalike", "info", "-c", str(folder)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "server runs" in done.stderr


# -- migrations ------------------------------------------------------------------------------


def test_migrations_race_safely_and_refuse_what_they_cannot_open(
    postgres: PostgresServer, pg_uri: str,
) -> None:
    uri = PostgresURI.parse(pg_uri)
    with pytest.raises(CorruptCollectionError, match="does not exist"):
        PostgresStore(uri, 8)  # opening, not creating: the schema must be there
    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(uri, 8, create=True))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(stores) == 8
    stores[0].write([])
    for store in stores:
        store.close()
    with postgres.admin() as conn:
        meta = dict(conn.execute(f'SELECT key, value FROM "{uri.schema}".meta').fetchall())
    assert meta == {"schema_version": str(len(STEPS)), "dim": "8", "generation": "1"}

    with pytest.raises(CorruptCollectionError, match="8-d vectors"):
        PostgresStore(uri, 16)
    store = PostgresStore(uri, 8)
    store.write([NewImage("/a.jpg", 1, 1, "h", vector=np.ones(8, np.float32) / 8 ** 0.5)])
    store.close()
    with pytest.raises(CollectionExistsError, match="already holds a collection"):
        PostgresStore(uri, 8, create=True)
    with postgres.admin() as conn:
        conn.execute(f"UPDATE \"{uri.schema}\".meta SET value = '99' "
                     "WHERE key = 'schema_version'")
    with pytest.raises(CorruptCollectionError, match="Upgrade lookalike"):
        PostgresStore(uri, 8)


def test_a_version_2_schema_is_upgraded_in_place(postgres: PostgresServer, pg_uri: str) -> None:
    uri = PostgresURI.parse(pg_uri)
    store = PostgresStore(uri, 8, create=True)
    [kept] = store.write([NewImage("/a.jpg", 1, 1, "h", vector=np.ones(8, np.float32) / 8 ** 0.5)])
    store.close()
    with postgres.admin() as conn:  # as version 2 left it: no etags, event positions, decisions
        conn.execute(f'ALTER TABLE "{uri.schema}".images DROP COLUMN etag')
        conn.execute(f'ALTER TABLE "{uri.schema}".images DROP COLUMN file_fields')
        conn.execute(f'DROP TABLE "{uri.schema}".fields')
        conn.execute(f'DROP TABLE "{uri.schema}".field_counts')
        conn.execute(f'DROP TABLE "{uri.schema}".event_positions')
        conn.execute(f'DROP TABLE "{uri.schema}".decisions')
        conn.execute(f"UPDATE \"{uri.schema}\".meta SET value = '2' WHERE key = 'schema_version'")
    store = PostgresStore(uri, 8)
    try:
        assert store.get([kept])[kept].etag is None and store.event_positions(["/a.jpg"]) == {}
        store.apply_events(EventWrite(positions={"/a.jpg": "01"}))
        assert store.event_positions(["/a.jpg"]) == {"/a.jpg": "01"}
        store.decide([Decision.of("h", "g", "distinct")])
        assert [d.verdict for d in store.decisions()] == ["distinct"]
    finally:
        store.close()


def test_a_version_4_schema_gets_its_fields_when_opened(
    postgres: PostgresServer, pg_uri: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lookalike.storage import postgres_fields
    from lookalike.where import Where

    monkeypatch.setattr(postgres_fields, "BACKFILL_CHUNK", 2)  # several pages
    uri = PostgresURI.parse(pg_uri)
    store = PostgresStore(uri, 8, create=True)
    vector = np.ones(8, np.float32) / 8 ** 0.5
    ids = store.write([NewImage(f"/p/{n}.jpg", n, n, f"h{n}", 4, 3, vector,
                                metadata=json.dumps({"n": n, "tags": ["a", str(n)]}))
                       for n in range(5)] + [NewImage("/p/bad.jpg", 1, 1, "x", error="bad")])
    store.retire([ids[1]])
    fields, keys = store.fields(ids), store.field_keys()
    store.close()
    with postgres.admin() as conn:  # as version 4 left it
        conn.execute(f'DROP TABLE "{uri.schema}".fields')
        conn.execute(f'DROP TABLE "{uri.schema}".field_counts')
        conn.execute(f'ALTER TABLE "{uri.schema}".images DROP COLUMN file_fields')
        conn.execute(f"UPDATE \"{uri.schema}\".meta SET value = '4' WHERE key = 'schema_version'")
    store = PostgresStore(uri, 8)
    try:
        assert set(fields) == {ids[0], *ids[2:5]}
        assert store.fields(ids) == fields and store.field_keys() == keys
        assert store.matching(Where.parse("tags = a and n >= 1")).tolist() == ids[2:5]
    finally:
        store.close()


def test_metadata_postgres_cannot_hold_is_a_usage_error_and_writes_nothing(pg_uri: str) -> None:
    store = PostgresStore(PostgresURI.parse(pg_uri), 8, create=True)
    generation = store.generation()
    vector = np.ones(8, np.float32) / 8 ** 0.5
    with pytest.raises(UsageError, match="refused a value"):  # jsonb has no \u0000
        store.write([NewImage("/a.jpg", 1, 1, "h", vector=vector, metadata='{"a": "\\u0000"}')])
    assert store.generation() == generation and store.max_id() == 0
    store.close()


# -- concurrent writers ----------------------------------------------------------------------


def test_two_writer_processes_at_once_lose_nothing(pg_uri: str) -> None:
    """Two processes write overlapping uris while a reader catches up the way a live index
    does (ids above the last it saw): no unique violation, one live row per uri, and the reader
    misses no committed id."""
    store = PostgresStore(PostgresURI.parse(pg_uri), 8, create=True)
    start_generation = store.generation()
    writers = [subprocess.Popen([sys.executable, str(WRITER), pg_uri, name, "150", str(seed)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for seed, name in enumerate(["one", "two"])]
    seen: list[int] = []
    last = 0
    while any(w.poll() is None for w in writers):
        for ids, _ in store.iter_vectors(after_id=last, active_only=False):
            seen += ids.tolist()
            last = int(ids[-1])
        time.sleep(0.002)
    outputs = [w.communicate() for w in writers]
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
    results = [json.loads(out) for out, _ in outputs]
    for ids, _ in store.iter_vectors(after_id=last, active_only=False):
        seen += ids.tolist()
    written = [set(r["ids"]) for r in results]
    assert not written[0] & written[1]
    stored = {int(i) for ids, _ in store.iter_vectors(active_only=False) for i in ids}
    assert stored == written[0] | written[1] and sorted(seen) == sorted(stored)
    assert len(seen) == len(set(seen))
    live = store.file_states()
    shared = [uri for uri in live if uri.startswith("/shared/")]
    assert shared and all(live[u].status == "active" for u in live)
    assert store.generation() == start_generation + sum(r["transactions"] for r in results)
    store.close()


def test_two_folders_sharing_one_schema_see_each_others_images(photos: Path, tmp_path: Path,
                                                               pg_uri: str) -> None:
    """Two machines, each with its own copy of the collection folder (manifest, index files),
    write to one PostgreSQL schema at the same time; each then finds the other's images."""
    files = sorted(photos.glob("*.jpg"))
    halves = [tmp_path / "half-a", tmp_path / "half-b"]
    for n, half in enumerate(halves):
        half.mkdir()
        for f in files[n::2]:
            shutil.move(f, half / f.name)
    Collection.create(tmp_path / "a", store=pg_uri).close()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    cols = [Collection.open(tmp_path / "a"), Collection.open(tmp_path / "b")]
    reports = [None, None]

    def add(n: int) -> None:
        reports[n] = cols[n].add([halves[n]], workers=0, show_progress=False)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.added for r in reports] == [len(files[0::2]), len(files[1::2])]
    for n, col in enumerate(cols):
        other = halves[1 - n] / files[1 - n].name
        assert col.search(other, k=1)[0].uri == str(other)
        assert col.info().images == len(files)
        col.close()
