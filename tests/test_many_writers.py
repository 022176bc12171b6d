"""Many writers, one truth: CLI processes and a running server writing one collection at once.

`lookalike add`, `lookalike index` and `lookalike remove` run as real processes while a real
`lookalike serve` takes uploads and deletes. Whatever a writer acknowledged must hold afterwards,
both in the server that watched it happen and in a process that opens the collection fresh:
every active image comes first when searched by its own picture, no removed image comes back,
and an acknowledged upload keeps its file.

``LOOKALIKE_TEST_SEED`` picks the random interleaving of the big test (for repeated runs), and
``LOOKALIKE_TEST_SECONDS`` how long its writers write.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import free_port, make_variants, wait_ready
from lookalike import Collection

SEED = int(os.environ.get("LOOKALIKE_TEST_SEED", "2026"))
WRITE_SECONDS = float(os.environ.get("LOOKALIKE_TEST_SECONDS", "20"))
LOCKED = "being written by another"  # a CLI writer refused: another one holds the lock (exit 1)


# -- one writer elsewhere, one upload here -------------------------------------------------------


def test_an_image_added_by_another_process_while_the_server_takes_an_upload_stays_searchable(
    sample_dir: Path, tmp_path: Path
) -> None:
    pool = make_variants(sample_dir, tmp_path / "pool", 14)
    x, y = pool[12:]
    col_dir = _indexed(tmp_path, _move(pool[:12], tmp_path / "photos"))
    # No auto-compaction: its once-a-second catch-up would sometimes land between the two
    # writes and hide the race this test is about.
    server, url = _serve(col_dir, tmp_path / "serve.log", "--no-auto-compact")
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            _assert_caught_up(http, tmp_path / "photos")
            added = _cli("add", str(x), "-c", str(col_dir))  # X: committed by another process
            assert added.returncode == 0, added.stderr
            assert http.post("/images", files={"file": y.read_bytes()}).status_code == 201
            top = _search(http, x.read_bytes())[0]
            assert top["uri"] == str(x), f"the server lost X: its top hit is {top}"
    finally:
        _stop(server)
    with Collection.open(col_dir) as col:  # what the server left on disk, read afresh
        hit = col.search(x, k=1, qe=0)[0]
        assert hit.uri == str(x), f"a fresh process lost X: its top hit is {hit}"
        assert col.verify().ok, col.verify().problems


def test_a_batch_indexed_by_another_process_while_the_server_takes_uploads_stays_searchable(
    sample_dir: Path, tmp_path: Path
) -> None:
    pool = make_variants(sample_dir, tmp_path / "pool", 72)
    batch = _move(pool[12:32], tmp_path / "batch")
    col_dir = _indexed(tmp_path, _move(pool[:12], tmp_path / "photos"))
    server, url = _serve(col_dir, tmp_path / "serve.log", "--no-auto-compact")
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            _assert_caught_up(http, tmp_path / "photos")
            indexer = subprocess.Popen([*LOOKALIKE, "index", str(batch), "-c", str(col_dir),
                                        "--workers", "0", "--no-progress"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            uploads = iter(pool[32:])
            while True:  # uploads wait for the indexer's lock; the last one comes after it
                finished = indexer.poll() is not None
                response = http.post("/images", files={"file": next(uploads).read_bytes()})
                assert response.status_code == 201, response.text
                if finished:
                    break
                time.sleep(0.1)
            assert indexer.returncode == 0, indexer.communicate()[1]
            tops = {p: _search(http, p.read_bytes())[0]["uri"] for p in sorted(batch.iterdir())}
            lost = {p.name: Path(top).name for p, top in tops.items() if top != str(p)}
            assert not lost, f"the server lost {len(lost)} of 20 (name: its top hit): {lost}"
    finally:
        _stop(server)
    with Collection.open(col_dir) as col:
        ids = [col.find(p) for p in sorted(batch.iterdir())]
        assert None not in ids
        tops = {i: col.search_vector(col.store.vector(i), k=1, qe=0)[0].image_id for i in ids}
        lost = {i: top for i, top in tops.items() if top != i}
        assert not lost, f"a fresh process lost {len(lost)} of 20 (id: its top hit): {lost}"
        assert col.verify().ok, col.verify().problems


# -- a remove racing a re-upload of the same bytes -----------------------------------------------


def test_a_concurrent_remove_never_deletes_the_file_of_an_acknowledged_upload(
    sample_dir: Path, tmp_path: Path
) -> None:
    pictures = [p.read_bytes() for p in make_variants(sample_dir, tmp_path / "pool", 60)]
    col_dir = tmp_path / "col"
    Collection.create(col_dir).close()
    server, url = _serve(col_dir, tmp_path / "serve.log", "--no-auto-compact")
    broken: dict[int, int] = {}  # acknowledged, still active image id -> GET .../file status
    rounds, deadline = 0, time.monotonic() + 12.0
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < deadline and not broken:
                rounds += 1
                with ThreadPoolExecutor(4) as refill:  # the last one: the target
                    ids = list(refill.map(lambda data: _upload(http, data), pictures))
                answered: list[int] = []
                stop = threading.Event()
                uploader = threading.Thread(target=_reupload,
                                            args=(url, pictures[-1], stop, answered))
                uploader.start()
                try:
                    time.sleep(0.05)
                    for _ in range(200):  # `lookalike remove` of them all, the target last
                        done = _cli("remove", *map(str, ids), "-c", str(col_dir))
                        if done.returncode == 0:
                            break
                        assert LOCKED in done.stderr, done.stderr
                    else:
                        pytest.fail("`lookalike remove` never got the writer lock")
                    time.sleep(0.2)
                finally:
                    stop.set()
                    uploader.join()
                for image_id in sorted(set(answered)):
                    if http.get(f"/images/{image_id}").status_code == 200:  # still active
                        status = http.get(f"/images/{image_id}/file").status_code
                        if status != 200:
                            broken[image_id] = status
    finally:
        _stop(server)
    assert not broken, (f"round {rounds}: acknowledged uploads still active whose file is gone "
                        f"(id: GET /images/id/file status): {broken}")


# -- everyone at once, at random ------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_many_writers_interleaved_at_random_lose_nothing(
    store: str, sample_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    uri = request.getfixturevalue("pg_uri") if store == "postgres" else None
    pool = make_variants(sample_dir, tmp_path / "pool", 260)
    start, watched, staging = tmp_path / "start", tmp_path / "watched", tmp_path / "staging"
    for folder in (start, watched, staging):
        folder.mkdir()
    for picture in pool[:20]:
        shutil.move(picture, start / picture.name)
    col_dir = tmp_path / "col"
    with Collection.create(col_dir, store=uri) as col:
        col.index([start], workers=0, show_progress=False)
    ledger = Ledger(pool[20:], random.Random(SEED))
    server, url = _serve(col_dir, tmp_path / "serve.log")
    try:
        kinds = ("add", "index", "upload", "upload", "remove", "delete")
        writers = [threading.Thread(target=_write_for_a_while,
                                    args=(ledger, kind, n, col_dir, url, watched, staging))
                   for n, kind in enumerate(kinds)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        with Collection.open(col_dir) as col, httpx.Client(base_url=url, timeout=60) as http:
            problems = [f"while serving: {p}" for p in _check(col, ledger)]
            checked = random.Random(SEED).sample(sorted(ledger.active),
                                                 min(100, len(ledger.active)))
            for image_id in checked:  # through the server, by the picture itself
                hits = _search(http, Path(ledger.active[image_id]).read_bytes())
                if hits[0]["image_id"] != image_id:
                    problems.append(f"server: {ledger.name(image_id)} not first; top hit "
                                    f"{ledger.name(hits[0]['image_id'])}, {hits[0]['score']}")
                problems += [f"server: removed {h['image_id']} found" for h in hits
                             if h["image_id"] in ledger.gone]
    finally:
        log = _stop(server)
    with Collection.open(col_dir) as col:  # what the writers left on disk, read afresh
        problems += [f"afresh: {p}" for p in _check(col, ledger)]
        problems += [f"verify: {p}" for p in col.verify().problems]
    problems = ledger.unexpected + problems
    if "Traceback" in log:
        problems.append(f"the server logged an error: {log[-2000:]}")
    assert all(ledger.acks.values()), f"a writer never got through: {ledger.acks}"
    assert not problems, (
        f"{len(problems)} problems (seed {SEED}; {len(ledger.active)} active; acknowledged "
        f"{ledger.acks}; refused {ledger.refused}):\n  " + "\n  ".join(problems[:30]))


# -- helpers --------------------------------------------------------------------------------------

LOOKALIKE = [sys.executable, "-m", "lookalike"]


class Ledger:
    """What each writer was told: acknowledged images (id -> picture), acknowledged removals,
    pictures not used yet (each is added once, so that its rank 1 is unambiguous)."""

    def __init__(self, fresh: list[Path], rng: random.Random) -> None:
        self.lock = threading.Lock()
        self.fresh = fresh
        self.rng = rng
        self.kept: dict[int, Path] = {}  # added or uploaded, not removed: removable
        self.claimed: set[int] = set()  # being removed right now
        self.gone: set[int] = set()
        self.indexed: set[Path] = set()  # acknowledged by an `index` run (never removed)
        self.active: dict[int, str] = {}  # filled by _check: the store's active images
        self.origin: dict[int, str] = {}  # image id -> which writer, which picture
        self.acks = dict.fromkeys(("add", "index", "upload", "remove", "delete"), 0)
        self.refused = dict.fromkeys(self.acks, 0)
        self.unexpected: list[str] = []

    def take(self) -> Path | None:
        with self.lock:
            return self.fresh.pop(self.rng.randrange(len(self.fresh))) if self.fresh else None

    def claim(self) -> int | None:
        with self.lock:
            free = sorted(set(self.kept) - self.claimed)
            choice = self.rng.choice(free) if free else None
            if choice is not None:
                self.claimed.add(choice)
            return choice

    def done(self, kind: str, ok: bool, image_id: int | None = None,
             picture: Path | None = None) -> None:
        with self.lock:
            self.acks[kind] += ok
            self.refused[kind] += not ok
            if kind in ("remove", "delete") and image_id is not None:
                self.claimed.discard(image_id)
                if ok:
                    del self.kept[image_id]
                    self.gone.add(image_id)
            elif ok and image_id is not None and picture is not None:
                self.kept[image_id] = picture
                self.origin[image_id] = f"{kind} {picture.name}"
            elif not ok and picture is not None:
                self.fresh.append(picture)  # not acknowledged: nothing was written

    def name(self, image_id: int) -> str:
        where = self.origin.get(image_id) or Path(self.active.get(image_id, "?")).name
        return f"{image_id} ({where})"


def _write_for_a_while(ledger: Ledger, kind: str, n: int, col_dir: Path, url: str,
                       watched: Path, staging: Path) -> None:
    rng = random.Random(f"{SEED}-{n}")
    deadline = time.monotonic() + WRITE_SECONDS
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 1.5 if kind == "delete" else 0.6))
            try:
                _write_once(ledger, kind, col_dir, http, watched, staging, rng)
            except Exception as exc:  # noqa: BLE001 - reported by the test
                ledger.unexpected.append(f"{kind}: {type(exc).__name__}: {exc}")


def _write_once(ledger: Ledger, kind: str, col_dir: Path, http: httpx.Client, watched: Path,
                staging: Path, rng: random.Random) -> None:
    if kind in ("add", "upload"):
        picture = ledger.take()
        if picture is None:
            return
        if kind == "add":
            done = _cli("add", str(picture), "-c", str(col_dir), "--json")
            ok, answer = done.returncode == 0, done.stderr
            image_id = json.loads(done.stdout)["ids"][str(picture)] if ok else None
            expected = ok or (done.returncode == 1 and LOCKED in answer)
        else:
            response = http.post("/images", files={"file": picture.read_bytes()})
            ok, answer = response.status_code == 201, response.text
            image_id = response.json()["image"]["image_id"] if ok else None
            expected = ok or response.status_code == 503
        if expected:
            ledger.done(kind, ok, image_id, picture)
        else:
            ledger.unexpected.append(f"{kind} {picture.name}: {answer}")
    elif kind == "index":
        for _ in range(rng.randint(1, 3)):  # the folder grows, a whole file at a time
            picture = ledger.take()
            if picture is not None:
                shutil.copy(picture, staging / picture.name)
                os.replace(staging / picture.name, watched / picture.name)
        before = set(watched.iterdir())
        done = _cli("index", str(watched), "-c", str(col_dir), "--workers", "0",
                    "--no-progress", "--json")
        if done.returncode == 0 and not json.loads(done.stdout)["failed"]:
            ledger.indexed |= before
            ledger.done(kind, True)
        elif done.returncode == 1 and LOCKED in done.stderr:
            ledger.done(kind, False)
        else:
            ledger.unexpected.append(f"index: {done.returncode} {done.stdout} {done.stderr}")
    else:
        image_id = ledger.claim()
        if image_id is None:
            return
        if kind == "remove":
            done = _cli("remove", str(image_id), "-c", str(col_dir))
            ok, refused, answer = done.returncode == 0, LOCKED in done.stderr, done.stderr
        else:
            response = http.delete(f"/images/{image_id}")
            ok, refused, answer = response.is_success, response.status_code == 503, response.text
        if ok or refused:
            ledger.done(kind, ok, image_id)
        else:
            ledger.unexpected.append(f"{kind} {image_id}: {answer}")


def _check(col: Collection, ledger: Ledger) -> list[str]:
    """Every way the collection disagrees with the ledger or with itself, searching for every
    active image by its stored vector."""
    states = col.store.file_states().values()
    ledger.active = {r.id: r.uri for r in states if r.status == "active"}
    assert len(ledger.active) > 40, "the writers wrote too little to prove anything"
    for path in ledger.indexed:
        ledger.origin.setdefault(col.find(path) or 0, f"index {path.name}")
    problems = [f"acknowledged {ledger.name(i)} is not active" for i in ledger.kept
                if i not in ledger.active]
    problems += [f"removed {i} is active again" for i in ledger.gone & ledger.active.keys()]
    problems += [f"indexed {p.name} is not active" for p in ledger.indexed if not col.find(p)]
    problems += [f"the file of {ledger.name(i)} is gone" for i, uri in ledger.active.items()
                 if not Path(uri).is_file()]
    for image_id in sorted(ledger.active):
        hits = col.search_vector(col.store.vector(image_id), k=3, qe=0)  # type: ignore[arg-type]
        if not hits or hits[0].image_id != image_id:
            top = f"{ledger.name(hits[0].image_id)}, {hits[0].score:.3f}" if hits else None
            problems.append(f"{ledger.name(image_id)} not first; top hit {top}")
        problems += [f"removed {h.image_id} found" for h in hits if h.image_id in ledger.gone]
    return problems


def _serve(collection: Path, log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen([*LOOKALIKE, "serve", "-c", str(collection), "--port",
                                    str(port), *args], stdout=out, stderr=subprocess.STDOUT)
    process.log = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=lambda: process.poll() is None)
    except (AssertionError, TimeoutError):
        process.kill()
        process.wait()
        raise AssertionError(log.read_text(errors="replace")) from None
    return process, url


def _stop(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM, as a service manager stops it: it must shut down cleanly (uvicorn re-raises the
    signal once it has, so the process ends by SIGTERM). Returns its log."""
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    log = process.log.read_text(errors="replace")  # type: ignore[attr-defined]
    assert process.returncode in (0, -signal.SIGTERM), log[-3000:]
    return log


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LOOKALIKE, *args], capture_output=True, text=True, timeout=300,
                          check=False)


def _search(http: httpx.Client, data: bytes, k: int = 5) -> list[dict]:
    response = http.post("/search/visual", params={"k": k, "qe": 0}, files={"file": data})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def _upload(http: httpx.Client, data: bytes) -> int:
    response = http.post("/images", files={"file": data})
    assert response.status_code in (200, 201), response.text
    return response.json()["image"]["image_id"]


def _reupload(url: str, data: bytes, stop: threading.Event, answered: list[int]) -> None:
    """Upload the same bytes again and again; note every id an answer acknowledged (a 503, or
    a 404 when a remove lands between the upload and its answer, acknowledges nothing)."""
    with httpx.Client(base_url=url, timeout=60) as http:
        while not stop.is_set():
            response = http.post("/images", files={"file": data})
            if response.status_code in (200, 201):
                answered.append(response.json()["image"]["image_id"])


def _move(pictures: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for picture in pictures:
        shutil.move(picture, folder / picture.name)
    return folder


def _indexed(tmp_path: Path, photos: Path) -> Path:
    """A new collection of the photos in ``photos``."""
    col_dir = tmp_path / "col"
    with Collection.create(col_dir) as col:
        col.index([photos], workers=0, show_progress=False)
    return col_dir


def _assert_caught_up(http: httpx.Client, photos: Path) -> None:
    """One search through the server: it has caught up with the store."""
    known = photos / "img0003.jpg"
    assert _search(http, known.read_bytes())[0]["uri"] == str(known)
