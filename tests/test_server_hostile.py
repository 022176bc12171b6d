"""The server against hostile clients and hostile files (issue 13, items 4a, 5 and 9).

Stalled connections go against the real `lookalike serve` in a subprocess (its protocol and
open-file limit are the point); the rest against a real uvicorn server in a thread over real
collections indexed with the test model, with real files swapped, linked and killed under it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import TINY, LiveServer
from lookalike.collection import Collection
from test_cli_serve import serve

README = Path(__file__).resolve().parent.parent / "README.md"


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"], body


# -- stalled clients (4a): the real `lookalike serve` ------------------------------------------

def stalled(port: int, kind: str) -> socket.socket:
    """A connection that stops: after connecting (``silent``), in its headers (``head``), or
    in its body (``body``)."""
    sock = socket.create_connection(("127.0.0.1", port))
    if kind == "head":
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nAccept: */")
    elif kind == "body":
        sock.sendall(b"POST /search/visual HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n\xff\xd8\xff")
    return sock


def read_until_closed(sockets: list[socket.socket], deadline: float) -> dict[int, bytes]:
    """What each socket received before the server closed it, for those it closed before
    ``deadline``."""
    received: dict[int, bytearray] = {n: bytearray() for n in range(len(sockets))}
    closed: dict[int, bytes] = {}
    for sock in sockets:
        sock.setblocking(False)
    while len(closed) < len(sockets) and time.monotonic() < deadline:
        for n, sock in enumerate(sockets):
            if n in closed:
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                received[n] += data
            else:
                closed[n] = bytes(received[n])
        time.sleep(0.05)
    return closed


def test_stalled_clients_are_closed_and_never_crowd_out_normal_requests(
        served_copy: Path) -> None:
    # 256 descriptors (macOS's default soft limit): at 0a6001a, 300 stalled clients made every
    # request fail; the server now raises its soft limit to fit its connection bound.
    process, url = serve(served_copy, "--no-auto-compact", open_files=256,
                         env={"LOOKALIKE_HEAD_TIMEOUT": "2", "LOOKALIKE_BODY_TIMEOUT": "3"})
    port = int(url.rsplit(":", 1)[1])
    sockets: list[socket.socket] = []
    try:
        kinds = ["silent", "head", "body"] * 100
        sockets = [stalled(port, kind) for kind in kinds]
        opened = time.monotonic()
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(20):
                started = time.monotonic()
                response = client.get(f"/search/similar/{1 + n % 5}?k=3")
                assert response.status_code == 200, response.text
                assert time.monotonic() - started < 2.0
        closed = read_until_closed(sockets, opened + 3 + 15)
        assert len(closed) == len(sockets), f"{len(sockets) - len(closed)} stalled still open"
        for n, data in closed.items():
            if kinds[n] == "body":  # the body stalled: a 408 in the one error shape
                assert data.startswith(b"HTTP/1.1 408"), data[:200]
                assert b'"code": "request_timeout"' in data and b"connection: close" in data
            else:  # the head never came: closed without an answer
                assert data == b""
        assert time.monotonic() - opened >= 2.0
        assert httpx.get(f"{url}/search/similar/1?k=3", timeout=10).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


def test_past_the_connection_bound_stalled_heads_give_way_and_busy_ones_answer_503(
        served_copy: Path) -> None:
    process, url = serve(served_copy, "--no-auto-compact", "--max-connections", "40",
                         "--head-timeout", "60", "--body-timeout", "60")
    port = int(url.rsplit(":", 1)[1])
    try:
        # Every connection is busy with a request (its body stalled): a new one is refused.
        busy = [stalled(port, "body") for _ in range(40)]
        time.sleep(0.5)
        refused = httpx.get(f"{url}/search/similar/1", timeout=10)
        assert_error(refused, 503, "busy")
        assert refused.headers["retry-after"] == "1"
        for sock in busy:
            sock.close()
        time.sleep(0.5)
        # Every connection is waiting for its head: a new one takes the place of one of the
        # oldest, which then stays free for the requests after it.
        heads = [stalled(port, "head") for _ in range(20)]
        time.sleep(0.3)
        heads += [stalled(port, "head") for _ in range(20)]
        time.sleep(0.3)
        for _ in range(5):
            assert httpx.get(f"{url}/search/similar/1?k=3", timeout=10).status_code == 200
        gone = read_until_closed(heads, time.monotonic() + 2)
        assert len(gone) == 1 and min(gone) < 20, sorted(gone)
        for sock in heads:
            sock.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)


# -- a collection of real files, for 5 and 9 -------------------------------------------------

@pytest.fixture
def library(tmp_path: Path, sample_dir: Path) -> Path:
    """Three sample photos in a folder, one of them reached through a symlink (indexing
    follows symlinks), indexed with the test model; the collection is at ``library.lookalike``
    beside the folder."""
    folder = tmp_path / "photos"
    elsewhere = tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    photos = sorted(sample_dir.glob("*.jpg"))
    shutil.copy(photos[0], folder / "a.jpg")
    shutil.copy(photos[1], folder / "b.jpg")
    shutil.copy(photos[2], elsewhere / "c.jpg")
    (folder / "linked.jpg").symlink_to(elsewhere / "c.jpg")
    with Collection.create(tmp_path / "library.lookalike", model=TINY) as col:
        col.index([folder], workers=0)
    return folder


@pytest.fixture
def library_server(library: Path, start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(library.parent / "library.lookalike")


def image_ids(library: Path) -> dict[str, int]:
    with Collection.open(library.parent / "library.lookalike") as col:
        return {name: col.find(library / name) for name in ("a.jpg", "b.jpg", "linked.jpg")}


# -- 5: a file is served only while it is the file that was indexed --------------------------

def test_a_file_swapped_for_a_symlink_is_never_served(library: Path,
                                                      library_server: LiveServer) -> None:
    url, ids = library_server.url, image_ids(library)
    original = (library / "a.jpg").read_bytes()
    response = httpx.get(f"{url}/images/{ids['a.jpg']}/file")
    assert response.status_code == 200 and response.content == original
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-length"] == str(len(original))

    secret = library.parent / "secret.txt"
    secret.write_text("root:x:0:0:the secret\n")
    for target in (secret, Path("/etc/passwd")):
        (library / "a.jpg").unlink()
        (library / "a.jpg").symlink_to(target)
        assert_error(httpx.get(f"{url}/images/{ids['a.jpg']}/file"), 409, "file_changed")
    # A thumbnail is made from the file too: never from what a swapped link points at.
    secret_image = library.parent / "secret.jpg"
    secret_image.write_bytes(jpeg((1, 2, 3)))
    (library / "b.jpg").unlink()
    (library / "b.jpg").symlink_to(secret_image)
    assert_error(httpx.get(f"{url}/images/{ids['b.jpg']}/thumbnail"), 409, "file_changed")
    assert_error(httpx.get(f"{url}/images/{ids['b.jpg']}/file"), 409, "file_changed")


def test_a_folder_swapped_for_a_symlink_never_serves_a_planted_lookalike_of_another_file(
        tmp_path: Path, start_server: Callable[..., LiveServer]) -> None:
    """An image padded to another file's size and given its time, indexed, then the folder on
    its path swapped for a link to where that file is: size and time match, the bytes do not."""
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    secret = secret_dir / "x.jpg"
    secret.write_bytes(b"root:x:0:0:the secret\n" * 200)
    sub = tmp_path / "photos" / "sub"
    sub.mkdir(parents=True)
    planted = jpeg((200, 40, 90))
    (sub / "x.jpg").write_bytes(planted + b"\0" * (secret.stat().st_size - len(planted)))
    times = secret.stat()
    os.utime(sub / "x.jpg", ns=(times.st_atime_ns, times.st_mtime_ns))
    with Collection.create(tmp_path / "col", model=TINY) as col:
        col.index([tmp_path / "photos"], workers=0)
        image_id = col.find(sub / "x.jpg")
    url = start_server(tmp_path / "col").url
    assert httpx.get(f"{url}/images/{image_id}/file").status_code == 200
    sub.rename(tmp_path / "photos" / "sub.real")
    sub.symlink_to(secret_dir)
    assert (sub / "x.jpg").stat().st_size == (tmp_path / "photos/sub.real/x.jpg").stat().st_size
    refused = httpx.get(f"{url}/images/{image_id}/file")
    assert_error(refused, 409, "file_changed")
    assert b"root:" not in refused.content


def test_a_file_indexed_through_a_symlink_is_served_until_the_link_moves(
        library: Path, library_server: LiveServer) -> None:
    url, image_id = library_server.url, image_ids(library)["linked.jpg"]
    target = library.parent / "elsewhere" / "c.jpg"
    response = httpx.get(f"{url}/images/{image_id}/file")
    assert response.status_code == 200 and response.content == target.read_bytes()
    # A copy with the same bytes, size and time is served: it gives nothing away.
    twin = library.parent / "twin.jpg"
    shutil.copy2(target, twin)
    (library / "linked.jpg").unlink()
    (library / "linked.jpg").symlink_to(twin)
    assert httpx.get(f"{url}/images/{image_id}/file").content == target.read_bytes()
    # Same size and time, other bytes: not the file that was indexed.
    data = bytearray(twin.read_bytes())
    data[-3] ^= 0xFF
    stat = twin.stat()
    twin.write_bytes(bytes(data))
    os.utime(twin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert_error(httpx.get(f"{url}/images/{image_id}/file"), 409, "file_changed")


def test_a_file_gone_replaced_or_changed_answers_404_or_409_with_its_code(
        library: Path, library_server: LiveServer) -> None:
    url, ids = library_server.url, image_ids(library)
    a, b = library / "a.jpg", library / "b.jpg"
    with a.open("ab") as fh:  # changed in place: its size and time differ
        fh.write(b"\0")
    assert_error(httpx.get(f"{url}/images/{ids['a.jpg']}/file"), 409, "file_changed")
    a.unlink()
    assert_error(httpx.get(f"{url}/images/{ids['a.jpg']}/file"), 404, "file_missing")
    assert_error(httpx.get(f"{url}/images/{ids['a.jpg']}/thumbnail"), 404, "file_missing")
    os.mkfifo(a)  # a FIFO in its place: refused at once, never waited on
    assert_error(httpx.get(f"{url}/images/{ids['a.jpg']}/file", timeout=10), 404,
                 "file_missing")
    b.unlink()
    b.mkdir()
    assert_error(httpx.get(f"{url}/images/{ids['b.jpg']}/file"), 404, "file_missing")


def test_uploaded_files_and_thumbnails_are_still_served(library_server: LiveServer) -> None:
    url, data = library_server.url, jpeg((20, 200, 90), (300, 200))
    created = httpx.post(f"{url}/images", files={"file": data})
    assert created.status_code == 201, created.text
    image_id = created.json()["image"]["image_id"]
    response = httpx.get(f"{url}/images/{image_id}/file")
    assert response.status_code == 200 and response.content == data
    thumbnail = httpx.get(f"{url}/images/{image_id}/thumbnail?size=64")
    assert thumbnail.status_code == 200
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 64


# -- 9a: what --api-key leaves open is what the README says ----------------------------------

def readme_open_routes() -> list[str]:
    """The routes the README's security paragraph names as open (``/x/*``: a prefix)."""
    text = README.read_text(encoding="utf-8")
    paragraph = text[text.index("**Security.**"):].split("\n\n", 1)[0]
    return re.findall(r"`(/[^`\s]*)`", paragraph)


def test_with_an_api_key_exactly_the_routes_the_readme_names_are_open(
        start_server: Callable[..., LiveServer], library: Path) -> None:
    server = start_server(library.parent / "library.lookalike", api_key="k")
    listed = readme_open_routes()
    assert "/healthz" in listed and "/readyz" in listed

    def is_listed(path: str) -> bool:
        return any(path.startswith(r[:-1]) if r.endswith("*") else path == r for r in listed)

    probes = {"/static/app.js", "/docs-assets/swagger-ui-bundle.js", "/favicon.ico",
              "/images/1", "/images/1/file", "/images/1/thumbnail", "/search/similar/1"}
    probes |= {route.path for route in server.app.routes  # type: ignore[attr-defined]
               if "{" not in route.path and "GET" in (getattr(route, "methods", None) or ())}
    for path in sorted(probes):
        status = httpx.get(server.url + path).status_code
        assert (status != 401) == is_listed(path), (path, status, listed)
    # Everything README lists as open really answers without the key.
    for route in listed:
        path = route[:-1] + "app.js" if route == "/static/*" else route
        path = "/docs-assets/swagger-ui.css" if route == "/docs-assets/*" else path
        assert httpx.get(server.url + path).status_code == 200, path


# -- 9b, 9c, 9d ------------------------------------------------------------------------------

def test_racing_deletes_of_one_image_answer_one_200_and_then_404(
        library: Path, library_server: LiveServer) -> None:
    url = library_server.url

    def delete(image_id: int, start: threading.Barrier, answers: list[httpx.Response]) -> None:
        with httpx.Client(timeout=30) as client:
            start.wait()
            answers.append(client.delete(f"{url}/images/{image_id}"))

    for round_ in range(3):
        created = httpx.post(f"{url}/images", files={"file": jpeg((round_ * 80, 90, 200))})
        image_id = created.json()["image"]["image_id"]
        start, answers = threading.Barrier(12), []
        threads = [threading.Thread(target=delete, args=(image_id, start, answers))
                   for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] + [404] * 11, statuses
        for response in answers:
            if response.status_code == 404:
                assert_error(response, 404, "not_found")


def test_a_raw_body_declared_as_a_form_is_taken_as_the_image(library_server: LiveServer,
                                                              library: Path) -> None:
    # What `curl --data-binary @a.jpg URL` sends: no Content-Type given, so a form's.
    url, data = library_server.url, (library / "b.jpg").read_bytes()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    found = httpx.post(f"{url}/search/visual?k=1", content=data, headers=form)
    assert found.status_code == 200, found.text
    assert found.json()["results"][0]["uri"] == str(library / "b.jpg")
    added = httpx.post(f"{url}/images", content=jpeg((5, 5, 250)), headers=form)
    assert added.status_code == 201, added.text
    # A real form of this API's fields has no file in it.
    assert_error(httpx.post(f"{url}/images", content=b"", headers=form), 400, "missing_file")
    assert_error(httpx.post(f"{url}/images", data={"k": "3"}), 400, "missing_file")
    # Any other body is sniffed as an upload: a text file is not an image.
    for text in (b"hello, this is not a picture\n", b"a=1&b=2"):
        assert_error(httpx.post(f"{url}/search/visual", content=text, headers=form), 415,
                     "unsupported_media_type")


def test_an_upload_killed_mid_write_leaves_no_temporary_file_behind(library: Path) -> None:
    col_path = library.parent / "library.lookalike"
    shard = col_path / "uploads" / "ab"
    shard.mkdir(parents=True)
    # A writer killed with SIGKILL between writing its temporary file and renaming it.
    killed = subprocess.run(
        [sys.executable, "-c", "import os, pathlib, signal, sys; "
         "shard = pathlib.Path(sys.argv[1]); "
         "(shard / f'.ab12.jpg.{os.getpid()}.tmp').write_bytes(b'half an upload'); "
         "os.kill(os.getpid(), signal.SIGKILL)", str(shard)], check=False)
    assert killed.returncode == -signal.SIGKILL
    [left] = shard.glob(".*.tmp")
    alive = shard / f".cd34.jpg.{os.getpid()}.tmp"  # a writer still running keeps its file
    alive.write_bytes(b"being written")
    with Collection.open(col_path) as col:
        col.add_bytes(jpeg((9, 99, 199)))
    assert not left.exists() and alive.exists()


# -- 4b: one decode memory budget for every request --------------------------------------------

MIB = 1024 * 1024


def one_bit_png(side: int) -> bytes:
    """A complete 1-bit PNG of side x side pixels: a few KB that decode to side^2 bytes."""
    image = Image.new("1", (side, side))
    image.paste(1, (0, 0, side // 2, side))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def test_huge_decodes_share_one_budget_wait_for_room_or_answer_busy(
    library: Path, start_server: Callable[..., LiveServer], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # this test's budget alone
    bomb = one_bit_png(8_000)  # 64 MP: 128 MB to decode (1-bit as bytes, then as grey)
    assert len(bomb) < 20_000
    url = start_server(library.parent / "library.lookalike", decode_memory_bytes=200 * MIB,
                       decode_wait=0.3).url
    with httpx.Client(timeout=60) as client:
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: answers.append(
            client.post(f"{url}/search/visual", content=bomb))) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(200) >= 1 and set(statuses) <= {200, 503}, [
            r.text[:300] for r in answers if r.status_code != 200]
        for busy in (r for r in answers if r.status_code == 503):
            assert_error(busy, 503, "busy")
            assert int(busy.headers["Retry-After"]) >= 1
        assert statuses.count(503) >= 1, "six 128 MB decodes fitted a 200 MB budget at once"
        assert client.post(f"{url}/search/visual", content=bomb).status_code == 200

    small = start_server(library.parent / "library.lookalike", decode_memory_bytes=64 * MIB).url
    refused = httpx.post(f"{small}/search/visual", content=bomb, timeout=60)
    assert_error(refused, 422, "too_many_pixels")
    assert "decode memory budget" in refused.json()["error"]["message"]
    assert httpx.post(f"{small}/search/visual", content=jpeg((9, 9, 9)), timeout=60).is_success


# -- 2, 11: names of any bytes, and parameters in plain digits ---------------------------------

def test_names_that_are_not_utf8_are_served_escaped(
    tmp_path: Path, sample_dir: Path, start_server: Callable[..., LiveServer]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    raw = os.path.join(os.fsdecode(folder), os.fsdecode(b"caf\xe9\n.jpg"))
    shutil.copy(sorted(sample_dir.glob("*.jpg"))[0], raw)
    shutil.copy(sorted(sample_dir.glob("*.jpg"))[1], folder / "plain.jpg")
    with Collection.create(tmp_path / "col", model=TINY) as col:
        col.index([folder], workers=0)
        image_id = col.find(raw)
    url = start_server(tmp_path / "col").url
    shown = str(folder) + "/caf\\xe9\n.jpg"
    assert httpx.get(f"{url}/images/{image_id}").json()["uri"] == shown
    hits = httpx.get(f"{url}/search/similar/{image_id + 1}?k=1").json()["results"]
    assert [h["uri"] for h in hits] == [shown]
    served = httpx.get(f"{url}/images/{image_id}/file")
    assert served.status_code == 200 and served.content == Path(raw).read_bytes()


def test_integers_are_plain_decimal_digits(library_server: LiveServer) -> None:
    url = library_server.url
    assert httpx.get(f"{url}/search/similar/1?k=10").status_code == 200
    for query in ("k=1_0", "k=+10", "k=%2010", "qe=0_1", "ef=6_4"):
        assert_error(httpx.get(f"{url}/search/similar/1?{query}"), 422, "invalid_parameter")
    refused = httpx.get(f"{url}/search/similar/1?k=1_0").json()["error"]["message"]
    assert refused == "k: '1_0' is not an integer in decimal digits"  # the name the client used
    assert_error(httpx.get(f"{url}/images/1_0"), 422, "invalid_parameter")
    assert_error(httpx.get(f"{url}/images/1/thumbnail?size=6_4"), 422, "invalid_parameter")
    assert_error(httpx.post(f"{url}/search/visual", files={"file": ("a.jpg", jpeg((1, 2, 3)))},
                            data={"k": "1_0"}), 422, "invalid_parameter")
