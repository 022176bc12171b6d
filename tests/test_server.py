"""The HTTP API on a real uvicorn server over a real collection: searches, uploads, deletes,
security, and every kind of bad input answered with one JSON error shape, never a 500.

The servers here serve the sample photos indexed with the test model (test-tiny): the API's
behaviour does not depend on the model. The real model serves the test of what a search finds,
and the one whose compaction runs `lookalike compact` in a process that cannot load test-tiny.
"""

from __future__ import annotations

import io
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import LiveServer, malformed_exif_image
from lookalike.collection import Collection


@pytest.fixture
def served_copy(tiny_collection: Path, tmp_path: Path) -> Path:
    """Overrides conftest's (and so its live_server's): a private copy of the test-tiny one."""
    path = tmp_path / "photos.lookalike"
    shutil.copytree(tiny_collection, path)
    return path


@pytest.fixture
def real_model_copy(sample_collection: Path, tmp_path: Path) -> Path:
    """A private copy of the sample photos indexed with the real model."""
    path = tmp_path / "real.lookalike"
    shutil.copytree(sample_collection, path)
    return path


def jpeg(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code and body["error"]["message"]
    return body


def top_uri(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["uri"]


# -- searching -------------------------------------------------------------------------------


def test_visual_search_finds_the_original_of_an_edited_copy(
        real_model_copy: Path, start_server: Callable[..., LiveServer], edited) -> None:
    live_server = start_server(real_model_copy)
    for edit, original, copy in edited[::7]:
        response = httpx.post(f"{live_server.url}/search/visual", params={"k": 5},
                              files={"file": (copy.name, copy.read_bytes(), "image/jpeg")})
        assert top_uri(response) == str(original), edit
        body = response.json()
        scores = [hit["score"] for hit in body["results"]]
        assert len(scores) == 5 and all(0.0 <= s <= 1.0 for s in scores)
        # Without query expansion the ranking is by score alone.
        plain = httpx.post(f"{live_server.url}/search/visual", params={"k": 5, "qe": 0},
                           files={"file": (copy.name, copy.read_bytes(), "image/jpeg")}).json()
        plain_scores = [hit["score"] for hit in plain["results"]]
        assert plain_scores == sorted(plain_scores, reverse=True)
        assert plain["results"][0]["image_id"] == body["results"][0]["image_id"]
        assert plain["results"][0]["score"] == pytest.approx(body["results"][0]["score"])
        hit = body["results"][0]
        assert set(hit) == {"image_id", "uri", "score", "distance", "width", "height",
                            "thumbnail_url", "file_url", "match", "copies"}
        assert hit["match"] in ("exact", "copy", "similar", None) and hit["copies"] == []
        assert hit["distance"] == pytest.approx((2 - 2 * (2 * hit["score"] - 1)) ** 0.5, abs=1e-4)
        assert set(body["took_ms"]) == {"read", "decode", "embed", "search", "total"}


def test_raw_body_search_and_parameters(live_server, sample_dir: Path) -> None:
    photo = sorted(sample_dir.glob("*.jpg"))[3]
    response = httpx.post(f"{live_server.url}/search/visual?k=3&ef=32",
                          content=photo.read_bytes())
    assert top_uri(response) == str(photo)
    assert response.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(response.json()["results"]) == 3
    # k also accepted as a form field
    form = httpx.post(f"{live_server.url}/search/visual", data={"k": "2"},
                      files={"file": photo.read_bytes()})
    assert len(form.json()["results"]) == 2


def test_similar_by_id_leaves_the_image_out(live_server) -> None:
    response = httpx.get(f"{live_server.url}/search/similar/1", params={"k": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["query"]["image_id"] == 1
    ids = [hit["image_id"] for hit in body["results"]]
    assert len(ids) == 4 and 1 not in ids
    plain = httpx.get(f"{live_server.url}/search/similar/1", params={"k": 4, "qe": 0}).json()
    scores = [hit["score"] for hit in plain["results"]]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    assert 1 not in {hit["image_id"] for hit in plain["results"]}
    refused = httpx.get(f"{live_server.url}/search/similar/1", params={"qe": -1})
    assert refused.status_code == 422 and "qe must be between 0 and 100" in refused.text


def test_search_within_a_slice_and_its_facets(served_copy: Path, start_server,
                                              sample_dir: Path) -> None:
    with Collection.open(served_copy) as col:
        col.tag([1, 2, 3], {"album": "trip"})
        col.tag([4], {"album": "home"})
        vector = col.store.vector(1)
    server = start_server(served_copy)
    trip = 'album = "trip"'
    similar = httpx.get(f"{server.url}/search/similar/5", params={"where": trip, "k": 10})
    assert {h["image_id"] for h in similar.json()["results"]} == {1, 2, 3}
    photo = sorted(sample_dir.glob("*.jpg"))[6]
    visual = httpx.post(f"{server.url}/search/visual", data={"where": trip, "max_per": "album=1"},
                        files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert len(visual.json()["results"]) == 1 and visual.json()["results"][0]["image_id"] in {
        1, 2, 3}
    body = httpx.post(f"{server.url}/search/vector",
                      json={"vector": vector.tolist(), "k": 3, "where": trip}).json()
    assert [h["image_id"] for h in body["results"]][0] == 1
    assert body["results"][0]["match"] is None  # the test model has no calibration
    bad = assert_error(httpx.get(f"{server.url}/search/similar/5",
                                 params={"where": "album = = trip"}), 400, "invalid_filter")
    assert "Bad filter expression" in bad["error"]["message"] and "^" in bad["error"]["message"]
    assert_error(httpx.get(f"{server.url}/search/similar/5", params={"max_per": "album"}), 400,
                 "bad_request")
    long = assert_error(httpx.get(f"{server.url}/search/similar/5",
                                  params={"where": "a in [" + "1," * 3000 + "1]"}), 400,
                        "invalid_filter")
    assert "at most 4096" in long["error"]["message"]
    for body in ({"vector": [1.0]}, {"vector": [0.0] * len(vector)},
                 {"vector": vector.tolist(), "wher": trip},
                 {"vector": vector.tolist(), "collapse": "true"},
                 {"vector": vector.tolist(), "k": 0}):
        assert_error(httpx.post(f"{server.url}/search/vector", json=body), 422,
                     "invalid_parameter")
    fields = {f["key"]: f["images"] for f in httpx.get(f"{server.url}/fields").json()["fields"]}
    assert fields["album"] == 4 and fields["name"] == fields["width"] > 4
    facets = httpx.get(f"{server.url}/facets", params={"keys": "album,format"}).json()["facets"]
    assert facets["album"] == [{"value": "trip", "images": 3}, {"value": "home", "images": 1}]
    assert facets["format"][0] == {"value": "jpeg", "images": fields["name"]}
    within = httpx.get(f"{server.url}/facets", params={"keys": "album", "where": trip}).json()
    assert within["facets"]["album"] == [{"value": "trip", "images": 3}]


# -- uploads and deletes ---------------------------------------------------------------------


def test_upload_is_searchable_when_acknowledged_and_delete_is_immediate(
        live_server, sample_dir: Path) -> None:
    url = live_server.url
    data = jpeg((300, 200), (10, 120, 240))
    response = httpx.post(f"{url}/images", files={"file": ("../../evil name.png", data)},
                          data={"metadata": '{"tags": ["sky"], "by": "test"}'})
    assert response.status_code == 201, response.text
    image = response.json()["image"]
    assert response.json()["created"] is True
    assert image["metadata"] == {"tags": ["sky"], "by": "test"}
    assert (image["width"], image["height"]) == (300, 200) and image["uploaded"]
    stored = Path(image["uri"])
    assert stored.is_file() and live_server.collection_path / "uploads" in stored.parents
    assert stored.suffix == ".jpg"  # sniffed from the bytes, not the name's .png
    assert not (live_server.collection_path.parent / "evil name.png").exists()

    hit = httpx.post(f"{url}/search/visual?k=1", content=data).json()["results"][0]
    assert hit["image_id"] == image["image_id"] and hit["score"] > 0.999

    again = httpx.post(f"{url}/images", files={"file": data})
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["image"]["image_id"] == image["image_id"]

    details = httpx.get(f"{url}/images/{image['image_id']}").json()
    assert details["metadata"] == {"tags": ["sky"], "by": "test"}
    file = httpx.get(f"{url}{image['file_url']}")
    assert file.content == data and file.headers["content-type"] == "image/jpeg"

    deleted = httpx.delete(f"{url}/images/{image['image_id']}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": image["image_id"]}
    results = httpx.post(f"{url}/search/visual?k=50", content=data).json()["results"]
    assert image["image_id"] not in [h["image_id"] for h in results]
    assert not stored.exists()
    assert_error(httpx.get(f"{url}/images/{image['image_id']}"), 404, "not_found")


def test_thumbnail_is_a_small_cached_jpeg(live_server) -> None:
    response = httpx.get(f"{live_server.url}/images/2/thumbnail")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.format == "JPEG" and max(thumb.size) == 256
    assert "immutable" in response.headers["cache-control"]
    assert (live_server.collection_path / "thumbnails" / "256" / "2.jpg").is_file()
    small = httpx.get(f"{live_server.url}/images/2/thumbnail?size=64")
    assert max(Image.open(io.BytesIO(small.content)).size) == 64
    assert_error(httpx.get(f"{live_server.url}/images/2/thumbnail?size=5000"), 422,
                 "invalid_parameter")


def test_searches_during_uploads_and_deletes_see_a_consistent_collection(
        live_server, sample_dir: Path) -> None:
    url = live_server.url
    photos = [p.read_bytes() for p in sorted(sample_dir.glob("*.jpg"))]
    deleted: set[int] = set()
    problems: list[str] = []
    stop = threading.Event()

    def search(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            n = 0
            while not stop.is_set() or n < 3:
                gone_before = set(deleted)
                response = client.post("/search/visual?k=20", content=photos[(i + n) % len(photos)])
                n += 1
                if response.status_code != 200:
                    problems.append(response.text)
                    continue
                ids = [hit["image_id"] for hit in response.json()["results"]]
                if len(ids) != len(set(ids)):
                    problems.append(f"duplicate ids {ids}")
                if gone_before & set(ids):
                    problems.append(f"deleted ids returned: {gone_before & set(ids)}")

    def write() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for n in range(12):
                upload = jpeg((40 + n, 40), (n * 20, 9, 9))
                response = client.post("/images", files={"file": upload})
                if response.status_code != 201:
                    problems.append(response.text)
                    continue
                image_id = response.json()["image"]["image_id"]
                if n % 2:
                    assert client.delete(f"/images/{image_id}").status_code == 200
                    deleted.add(image_id)
                # the three oldest sample photos go too
                if n < 3:
                    assert client.delete(f"/images/{n + 1}").status_code == 200
                    deleted.add(n + 1)

    readers = [threading.Thread(target=search, args=(i,)) for i in range(6)]
    for thread in readers:
        thread.start()
    write()
    stop.set()
    for thread in readers:
        thread.join(timeout=120)
    assert not problems, problems[:5]
    stats = httpx.get(f"{url}/stats").json()
    assert stats["requests"]["POST /search/visual"]["errors"] == 0


def test_serve_compacts_in_the_background_and_keeps_answering(
        real_model_copy: Path, start_server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_COMPACT_MIN_DELTA", "2")
    monkeypatch.setenv("LOOKALIKE_COMPACT_DELTA_FRACTION", "0")
    server = start_server(real_model_copy)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        before = client.get("/stats").json()["index"]
        assert before["delta_vectors"] == 0
        uploads = [jpeg((50, 50 + n), (n * 70, 200, 40)) for n in range(3)]
        ids = [client.post("/images", files={"file": u}).json()["image"]["image_id"]
               for u in uploads]
        deadline = threading.Event()
        for _ in range(300):  # the compaction is a separate process: allow it 30 s
            stats = client.get("/stats").json()
            index = stats["index"]
            if (index["delta_vectors"] == 0 and stats["compaction"]["completed"] >= 1
                    and index["main_vectors"] == before["main_vectors"] + 3):
                break
            for upload, image_id in zip(uploads, ids, strict=True):
                hit = client.post("/search/visual?k=1", content=upload).json()["results"][0]
                assert hit["image_id"] == image_id
            deadline.wait(0.1)
        else:
            pytest.fail(f"no compaction: {stats}")
        for upload, image_id in zip(uploads, ids, strict=True):
            hit = client.post("/search/visual?k=1", content=upload).json()["results"][0]
            assert hit["image_id"] == image_id
    assert Collection.open(real_model_copy).verify().ok


# -- bad input: always a 4xx in the one error shape --------------------------------------------


def test_every_kind_of_bad_input_is_a_clear_4xx(live_server, tmp_path: Path) -> None:
    url = live_server.url
    photo = jpeg((120, 90))
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")  # 400 Mpx in a few kB
    cases = [
        (httpx.post(f"{url}/search/visual", data={"k": "3"}), 400, "missing_file"),
        (httpx.post(f"{url}/search/visual", content=b""), 400, "missing_file"),
        (httpx.post(f"{url}/search/visual", files={"file": ("a.jpg", b"")}), 400, "empty_file"),
        (httpx.post(f"{url}/search/visual", files={"file": ("a.jpg", b"hello, I am text\n")}),
         415, "unsupported_media_type"),
        (httpx.post(f"{url}/search/visual", content=photo[: len(photo) // 2]), 422,
         "invalid_image"),
        (httpx.post(f"{url}/search/visual", content=bomb.getvalue()), 422, "too_many_pixels"),
        (httpx.post(f"{url}/search/visual?k=0", content=photo), 422, "invalid_parameter"),
        (httpx.post(f"{url}/search/visual?k=100000", content=photo), 422, "invalid_parameter"),
        (httpx.post(f"{url}/search/visual?k=ten", content=photo), 422, "invalid_parameter"),
        (httpx.post(f"{url}/search/visual?ef=-1", content=photo), 422, "invalid_parameter"),
        (httpx.get(f"{url}/search/similar/424242"), 404, "not_found"),
        (httpx.get(f"{url}/search/similar/1?k=0"), 422, "invalid_parameter"),
        (httpx.get(f"{url}/images/424242"), 404, "not_found"),
        (httpx.get(f"{url}/images/424242/file"), 404, "not_found"),
        (httpx.get(f"{url}/images/424242/thumbnail"), 404, "not_found"),
        (httpx.delete(f"{url}/images/424242"), 404, "not_found"),
        (httpx.get(f"{url}/images/abc"), 422, "invalid_parameter"),
        (httpx.post(f"{url}/images", files={"file": photo}, data={"metadata": "{not json"}),
         400, "invalid_metadata"),
        (httpx.post(f"{url}/images", files={"file": photo}, data={"metadata": "[1, 2]"}),
         400, "invalid_metadata"),
        (httpx.post(f"{url}/images", files={"file": ("x.jpg", b"GIF89a-but-not-really")}), 415,
         "unsupported_media_type"),
        (httpx.post(f"{url}/images", files=[("file", photo), ("file", photo)]), 400,
         "bad_request"),
        (httpx.post(f"{url}/search/visual", content=b"--x\r\nnonsense",
                    headers={"Content-Type": "multipart/form-data"}), 400, "bad_request"),
        (httpx.put(f"{url}/images/1"), 405, "method_not_allowed"),
        (httpx.get(f"{url}/no/such/route"), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    # Path traversal, in ids, asset names and encoded slashes: refused, nothing read or written.
    for path in ("/images/..%2F..%2F..%2Fetc%2Fpasswd/file", "/images/1%2F..%2F..%2Fx/file",
                 "/static/..%2F..%2Fcollection.py", "/static/app.py", "/images/-1/file",
                 "/static/%2Fetc%2Fpasswd"):
        response = httpx.get(url + path)
        assert 400 <= response.status_code < 500, path
        assert "root:" not in response.text
        assert_error(response, response.status_code, response.json()["error"]["code"])
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert top_uri(httpx.post(f"{url}/search/visual", content=photo))  # still serving


def test_an_image_whose_exif_pillow_cannot_write_back_is_searched_and_stored(
    live_server,
) -> None:
    """Pillow's own orientation step raised on this EXIF, and the server answered 500 (issue
    13). The pixels are fine: the image is turned as its EXIF says, searched and stored."""
    url = live_server.url
    for n, fmt in enumerate(("JPEG", "WEBP")):
        payload = malformed_exif_image(fmt, size=(40 + n, 30))
        assert top_uri(httpx.post(f"{url}/search/visual", content=payload))
        stored = httpx.post(f"{url}/images", files={"file": ("x.img", payload)})
        assert stored.status_code == 201, stored.text
        image = stored.json()["image"]
        assert (image["width"], image["height"]) == (30, 40 + n)


def test_metadata_that_is_not_strict_json_is_refused_and_nothing_stored(live_server) -> None:
    url = live_server.url
    before = httpx.get(f"{url}/stats").json()["images"]
    hostile = ['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e999999}',
               '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
               '{"a": ' + "9" * 5_000 + "}",
               '{"a": "\\ud800"}', '{"\\udfff": 1}']
    for n, metadata in enumerate(hostile):
        photo = jpeg((64, 48), (n * 20, 255 - n * 20, 7))  # new bytes: never a duplicate
        response = httpx.post(f"{url}/images", files={"file": photo},
                              data={"metadata": metadata})
        body = assert_error(response, 400, "invalid_metadata")
        assert "metadata" in body["error"]["message"], metadata[:40]
        assert "sys." not in body["error"]["message"]  # no advice meant for Python code
    assert httpx.get(f"{url}/stats").json()["images"] == before
    fine = httpx.post(f"{url}/images", files={"file": jpeg((64, 48), (1, 2, 3))},
                      data={"metadata": '{"a": 1.5, "b": "caf\u00e9", "c": [null, true]}'})
    assert fine.status_code == 201, fine.text
    assert fine.json()["image"]["metadata"] == {"a": 1.5, "b": "caf\u00e9", "c": [None, True]}


@pytest.mark.parametrize("image_id", ["9223372036854775808", "99999999999999999999999",
                                      "0", "-1", "-9223372036854775809"])
def test_ids_out_of_range_are_404_on_every_route(live_server, image_id: str) -> None:
    url = live_server.url
    for method, path in (("GET", f"/images/{image_id}"), ("DELETE", f"/images/{image_id}"),
                         ("GET", f"/images/{image_id}/file"),
                         ("GET", f"/images/{image_id}/thumbnail"),
                         ("GET", f"/search/similar/{image_id}")):
        body = assert_error(httpx.request(method, url + path), 404, "not_found")
        assert f"No indexed image has id {image_id}" in body["error"]["message"], path
    assert httpx.get(f"{url}/images/9223372036854775807").status_code == 404
    assert httpx.get(f"{url}/images/1").status_code == 200


def test_upload_limit_refuses_large_bodies_with_or_without_a_length(
        served_copy: Path, start_server) -> None:
    server = start_server(served_copy, max_upload_bytes=50_000)
    big = jpeg((1200, 1200))
    big += b"\0" * max(0, 60_000 - len(big))
    body = assert_error(httpx.post(f"{server.url}/search/visual", content=big), 413,
                        "payload_too_large")
    assert "50,000" in body["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for start in range(0, len(big), 8192):
            yield big[start:start + 8192]

    assert_error(httpx.post(f"{server.url}/images", content=chunks()), 413, "payload_too_large")
    assert httpx.post(f"{server.url}/search/visual", content=jpeg()).status_code == 200


def test_api_keys(served_copy: Path, start_server) -> None:
    server = start_server(served_copy, api_key="reader-key", write_key="writer-key")
    url = server.url
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/").status_code == 200  # the page itself holds no data
    assert_error(httpx.get(f"{url}/stats"), 401, "unauthorized")
    assert_error(httpx.get(f"{url}/stats", headers={"X-API-Key": "nope"}), 401, "unauthorized")
    assert_error(httpx.post(f"{url}/search/visual", content=jpeg()), 401, "unauthorized")
    assert httpx.get(f"{url}/stats", headers={"X-API-Key": "reader-key"}).status_code == 200
    assert httpx.get(f"{url}/images/1/thumbnail",
                     headers={"Authorization": "Bearer reader-key"}).status_code == 200
    assert_error(httpx.post(f"{url}/images", files={"file": jpeg()},
                            headers={"X-API-Key": "reader-key"}), 403, "forbidden")
    assert_error(httpx.delete(f"{url}/images/1", headers={"X-API-Key": "reader-key"}), 403,
                 "forbidden")
    created = httpx.post(f"{url}/images", files={"file": jpeg()},
                         headers={"X-API-Key": "writer-key"})
    assert created.status_code == 201
    assert httpx.get(f"{url}/stats", headers={"X-API-Key": "writer-key"}).status_code == 200


def test_non_ascii_api_keys_work_and_wrong_ones_are_401(served_copy: Path,
                                                       start_server) -> None:
    server = start_server(served_copy, api_key="pässwörd", write_key="schlüssel")
    url = server.url

    def get(key: str, header: str = "X-API-Key") -> httpx.Response:
        value = f"Bearer {key}" if header == "Authorization" else key
        return httpx.get(f"{url}/stats", headers={header: value.encode()})

    for header in ("X-API-Key", "Authorization"):
        assert get("pässwörd", header).status_code == 200
        assert get("schlüssel", header).status_code == 200
        assert_error(get("pässwort", header), 401, "unauthorized")
        assert_error(get("passwörd", header), 401, "unauthorized")
        assert_error(get("\u263a", header), 401, "unauthorized")
    assert_error(httpx.get(f"{url}/stats", headers={"X-API-Key": b"\xff\xfe"}), 401,
                 "unauthorized")
    assert_error(httpx.delete(f"{url}/images/1", headers={"X-API-Key": "pässwörd".encode()}),
                 403, "forbidden")
    plain = start_server(served_copy, api_key="reader-key")
    assert_error(httpx.get(f"{plain.url}/stats", headers={"X-API-Key": "réader-key".encode()}),
                 401, "unauthorized")


def test_cors_is_off_by_default_and_configurable(served_copy: Path, start_server) -> None:
    origin = {"Origin": "http://example.test"}
    plain = start_server(served_copy)
    assert "access-control-allow-origin" not in httpx.get(f"{plain.url}/healthz",
                                                          headers=origin).headers
    open_ = start_server(served_copy, cors_origins=("http://example.test",))
    response = httpx.get(f"{open_.url}/healthz", headers=origin)
    assert response.headers["access-control-allow-origin"] == "http://example.test"


def test_not_ready_and_unloadable_collection_answer_503(tmp_path: Path) -> None:
    from lookalike.server import ServeConfig, create_app

    server = LiveServer(create_app(ServeConfig(collection=str(tmp_path / "missing"))))
    server.thread.start()
    try:
        for _ in range(100):
            try:
                response = httpx.get(f"{server.url}/readyz")
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        body = assert_error(response, 503, "not_ready")
        assert "missing" in body["error"]["message"]
        assert_error(httpx.post(f"{server.url}/search/visual", content=jpeg()), 503, "not_ready")
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


def test_openapi_describes_the_api(live_server) -> None:
    schema = httpx.get(f"{live_server.url}/openapi.json").json()
    for path in ("/search/visual", "/search/similar/{image_id}", "/images",
                 "/images/{image_id}", "/images/{image_id}/file", "/images/{image_id}/thumbnail",
                 "/healthz", "/readyz", "/stats"):
        assert path in schema["paths"], path
    docs = httpx.get(f"{live_server.url}/docs")
    assert docs.status_code == 200
    # Offline: Swagger UI's script and style come from the app itself, not a CDN.
    assert "cdn" not in docs.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs-assets/{asset}" in docs.text
        assert httpx.get(f"{live_server.url}/docs-assets/{asset}").status_code == 200
