"""Images in S3 (``s3://``) wherever a path is accepted, against a real S3 server (moto's).

Most tests use the fast ``test-tiny`` model; one module-scoped collection uses the real default
model, to show that an object is embedded exactly as the same bytes in a file are, and to run
the real `lookalike` command on it in a subprocess (which knows only the real models).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import cloud
from conftest import TINY, LiveServer, make_variants
from lookalike import objects
from lookalike.collection import Collection
from lookalike.errors import ImageNotFoundError, ObjectStoreError, UsageError


def with_comment(jpeg: bytes, tag: bytes) -> bytes:
    """``jpeg`` with a comment segment of 8 bytes after its start marker: tags of one length
    give files of one size and the same pixels, but other bytes (so another ETag)."""
    payload = tag.ljust(8, b"-")[:8]
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def retagged(image: bytes, tag: bytes) -> bytes:
    """An image of ``images`` with another comment: the same size and pixels, other bytes."""
    return with_comment(untagged(image), tag)


def untagged(image: bytes) -> bytes:
    """An image of ``images`` without its comment: the same pixels, other bytes and size."""
    return image[:2] + image[14:]


@dataclass
class Bucket:
    """A fresh bucket on the session's moto server, with this test's environment pointing at
    it (``monkeypatch``): lookalike reaches it as it would reach S3."""

    name: str
    client: Any

    def uri(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)


@pytest.fixture
def bucket(moto: cloud.MotoServer, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    return Bucket(moto.bucket(), moto.client("s3"))


@pytest.fixture(scope="module")
def images(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Eight distinct small JPEGs, each with an 8-byte comment segment (see with_comment)."""
    paths = make_variants(sample_dir, tmp_path_factory.mktemp("variants"), 8)
    return [with_comment(p.read_bytes(), b"v1") for p in paths]


def tiny(path: Path, **options: Any) -> Collection:
    return Collection.open_or_create(path, model=TINY, **options)


def dead_endpoint() -> str:
    return f"http://127.0.0.1:{cloud.free_port()}"  # nothing listens there


PREFIX_KEYS = ["photos/a.jpg", "photos/b.jpg", "photos/sub/c.jpg", "photos/with space ü.jpg"]


def test_a_prefix_is_indexed_like_a_folder_and_an_object_by_etag_and_size(
    bucket: Bucket, images: list[bytes], tmp_path: Path
) -> None:
    for key, data in zip(PREFIX_KEYS, images, strict=False):
        bucket.put(key, data)
    bucket.put("photos/notes.txt", b"not an image")
    bucket.put("photos/.hidden.jpg", images[5])
    bucket.put("photos/.cache/d.jpg", images[5])
    bucket.put("photosynthesis/e.jpg", images[6])  # shares the prefix's text, not the prefix
    with tiny(tmp_path / "col") as col:
        report = col.index([bucket.uri("photos/")], workers=0)
        assert (report.added, report.failed) == (4, ())
        states = col.store.file_states()
        assert sorted(states) == sorted(bucket.uri(k) for k in PREFIX_KEYS)
        head = bucket.client.head_object(Bucket=bucket.name, Key="photos/with space ü.jpg")
        record = states[bucket.uri("photos/with space ü.jpg")]
        assert (record.etag, record.size) == (head["ETag"].strip('"'), head["ContentLength"])
        assert record.mtime_ns and record.content_hash

        # The same bytes written again: a newer time, the same ETag and size, so unchanged.
        bucket.put("photos/a.jpg", images[0])
        again = col.index([bucket.uri("photos/")], workers=0)
        assert (again.unchanged, again.added, again.updated, again.removed) == (4, 0, 0, 0)

        # Other bytes of the same size: a new ETag, so that object alone is embedded again.
        bucket.put("photos/b.jpg", retagged(images[1], b"v2"))
        assert len(retagged(images[1], b"v2")) == len(images[1])
        changed = col.index([bucket.uri("photos/")], workers=0)
        assert (changed.unchanged, changed.updated, changed.added, changed.reused) == (3, 1, 0, 0)

        # A deleted object is removed on the next run, as a deleted file is.
        bucket.delete("photos/sub/c.jpg")
        swept = col.index([bucket.uri("photos/")], workers=0)
        assert (swept.removed, swept.unchanged) == (1, 3)
        assert col.find(bucket.uri("photos/sub/c.jpg")) is None

        # An object named alone is indexed whatever its name; indexing it sweeps nothing else.
        one = col.index([bucket.uri("photosynthesis/e.jpg")], workers=0)
        assert (one.added, one.removed) == (1, 0)
        assert col.find(bucket.uri("photosynthesis/e.jpg")) is not None
        assert col.info().images == 4


def test_missing_buckets_prefixes_and_objects_are_clear_errors_and_an_empty_prefix_is_empty(
    bucket: Bucket, images: list[bytes], tmp_path: Path
) -> None:
    bucket.put("empty/", b"")  # a "folder" made in the S3 console
    bucket.put("photos/a.jpg", images[0])
    with tiny(tmp_path / "col") as col:
        with pytest.raises(UsageError, match="no object under s3://no-such-bucket-x/"):
            col.index(["s3://no-such-bucket-x/"])
        with pytest.raises(UsageError, match="no object under .*/nothing/"):
            col.index([bucket.uri("nothing/")])
        with pytest.raises(UsageError, match=r"end it with a slash: s3://.*/photos/"):
            col.index([bucket.uri("photos")])
        report = col.index([bucket.uri("empty/")], workers=0)
        assert (report.added, report.failed) == (0, ())


def test_objects_that_cannot_be_images_become_failed_rows_with_the_reason(
    bucket: Bucket, images: list[bytes], tmp_path: Path
) -> None:
    bucket.put("p/good.jpg", images[0])
    bucket.put("p/broken.jpg", images[1][:200])
    bucket.put("p/big.jpg", images[2] + bytes(10_000))
    with tiny(tmp_path / "col", max_file_bytes=max(map(len, images)) + 100) as col:
        report = col.index([bucket.uri("p/")], workers=0)
        reasons = {f.uri: f.reason for f in report.failed}
        assert report.added == 1 and set(reasons) == {bucket.uri("p/broken.jpg"),
                                                       bucket.uri("p/big.jpg")}
        assert "corrupt or truncated" in reasons[bucket.uri("p/broken.jpg")]
        assert "over the size limit" in reasons[bucket.uri("p/big.jpg")]
        assert col.info().failed == 2
        assert col.index([bucket.uri("p/")], workers=0).unchanged == 3  # not retried


def test_an_unreachable_store_stops_the_run_without_failed_rows_and_a_rerun_completes(
    bucket: Bucket, images: list[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"p/{i}.jpg" for i in range(6)]
    for key, data in zip(keys, images, strict=False):
        bucket.put(key, data)
    real_read, reads = objects.read, []
    working = os.environ[objects.ENDPOINT_ENV]

    def read_then_lose_the_store(uri: str, max_bytes: int, **kw: Any) -> Any:
        reads.append(uri)
        if len(reads) == 4:  # the second batch, half read
            monkeypatch.setenv(objects.ENDPOINT_ENV, dead_endpoint())
        return real_read(uri, max_bytes, **kw)

    monkeypatch.setattr(objects, "read", read_then_lose_the_store)
    with tiny(tmp_path / "col") as col:
        with pytest.raises(ObjectStoreError, match="cannot reach the object store") as raised:
            col.index([bucket.uri("p/")], workers=0, batch_size=2)
        assert raised.value.transient
        assert (col.info().images, col.info().failed) == (2, 0)  # the first batch, kept

        monkeypatch.setenv(objects.ENDPOINT_ENV, working)
        report = col.index([bucket.uri("p/")], workers=0, batch_size=2)
        assert (report.unchanged, report.added, report.failed) == (2, 4, ())
        rows = col.store.file_states()
        assert sorted(rows) == sorted(bucket.uri(k) for k in keys)
        assert all(r.status == "active" for r in rows.values())
        assert col.info().images == 6 and col.info().removed == 0


def test_search_find_add_and_remove_take_uris(
    bucket: Bucket, images: list[bytes], tmp_path: Path
) -> None:
    bucket.put("p/a.jpg", images[0])
    bucket.put("p/b.jpg", images[1])
    bucket.put("q/copy of a.jpg", untagged(images[0]))  # same pixels, other bytes
    with tiny(tmp_path / "col") as col:
        report = col.add([bucket.uri("p/a.jpg"), bucket.uri("p/b.jpg")])
        assert report.added == 2
        [hit, *_] = col.search(bucket.uri("q/copy of a.jpg"), k=2)
        assert hit.uri == bucket.uri("p/a.jpg") and hit.score > 0.99
        image_id = col.find(bucket.uri("p/a.jpg"))
        assert image_id == hit.image_id and col.details(image_id).uri == bucket.uri("p/a.jpg")
        assert col.remove([bucket.uri("p/a.jpg")]) == [image_id]
        assert col.find(bucket.uri("p/a.jpg")) is None
        # Removing never deletes the object (as indexed files elsewhere never are).
        assert bucket.client.head_object(Bucket=bucket.name, Key="p/a.jpg")["ContentLength"]
        with pytest.raises(ImageNotFoundError):
            col.remove([bucket.uri("p/a.jpg")])


@pytest.fixture
def served(bucket: Bucket, images: list[bytes], tmp_path: Path,
           start_server: Callable[..., LiveServer]) -> tuple[LiveServer, dict[str, int]]:
    for i in range(4):
        bucket.put(f"p/{i}.jpg", images[i])
    with tiny(tmp_path / "col") as col:
        col.index([bucket.uri("p/")], workers=0)
        ids = {f"p/{i}.jpg": col.find(bucket.uri(f"p/{i}.jpg")) or 0 for i in range(4)}
    return start_server(tmp_path / "col"), ids


def test_the_server_streams_an_object_while_it_is_the_version_indexed(
    bucket: Bucket, images: list[bytes], served: tuple[LiveServer, dict[str, int]]
) -> None:
    server, ids = served
    url = server.url
    got = httpx.get(f"{url}/images/{ids['p/0.jpg']}/file")
    assert got.status_code == 200 and got.content == images[0]
    assert got.headers["content-type"] == "image/jpeg"
    assert got.headers["content-length"] == str(len(images[0]))
    thumb = httpx.get(f"{url}/images/{ids['p/0.jpg']}/thumbnail?size=64")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"

    bucket.put("p/0.jpg", retagged(images[0], b"v2"))  # same size, new ETag
    bucket.put("p/1.jpg", images[2])
    assert_error(httpx.get(f"{url}/images/{ids['p/0.jpg']}/file"), 409, "file_changed")
    assert_error(httpx.get(f"{url}/images/{ids['p/1.jpg']}/thumbnail"), 409, "file_changed")
    bucket.delete("p/2.jpg")
    assert_error(httpx.get(f"{url}/images/{ids['p/2.jpg']}/file"), 404, "file_missing")
    assert_error(httpx.get(f"{url}/images/{ids['p/2.jpg']}/thumbnail"), 404, "file_missing")

    # DELETE forgets the image and leaves the object where it is.
    assert httpx.delete(f"{url}/images/{ids['p/3.jpg']}").status_code == 200
    assert bucket.client.head_object(Bucket=bucket.name, Key="p/3.jpg")["ContentLength"]


def test_the_server_answers_503_while_the_object_store_is_unreachable(
    served: tuple[LiveServer, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ids = served
    monkeypatch.setenv(objects.ENDPOINT_ENV, dead_endpoint())
    refused = httpx.get(f"{server.url}/images/{ids['p/0.jpg']}/file", timeout=60)
    body = assert_error(refused, 503, "object_store_unavailable")
    assert "cannot reach the object store" in body["error"]["message"]
    assert refused.headers["retry-after"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    return body


# -- the real model, and the real command --------------------------------------------------


@dataclass
class RealCollections:
    bucket: Bucket
    from_s3: Path
    from_files: Path
    env: dict[str, str]
    count: int


@pytest.fixture(scope="module")
def real(moto: cloud.MotoServer, sample_dir: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCollections]:
    """The sample photos in a bucket and in a folder, each indexed with the default model."""
    folder = tmp_path_factory.mktemp("s3-real")
    bucket = Bucket(moto.bucket(), moto.client("s3"))
    for photo in sorted(sample_dir.glob("*.jpg")):
        bucket.put(f"photos/{photo.name}", photo.read_bytes())
    local = folder / "photos"
    shutil.copytree(sample_dir, local)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in moto.env.items():
            mp.setenv(name, value)
        with Collection.create(folder / "from-s3") as col:
            report = col.index([bucket.uri("photos/")], workers=2, batch_size=4)
            assert report.added == len(list(sample_dir.glob("*.jpg"))) and not report.failed
        with Collection.create(folder / "from-files") as col:
            col.index([local], workers=0)
        yield RealCollections(bucket, folder / "from-s3", folder / "from-files", moto.env,
                              report.added)


def vectors_by_name(path: Path) -> dict[str, np.ndarray | None]:
    with Collection.open(path) as col:
        return {uri.rsplit("/", 1)[1]: col.store.vector(r.id)
                for uri, r in col.store.file_states().items()}


def assert_same_vectors(one: dict[str, np.ndarray | None],
                        other: dict[str, np.ndarray | None]) -> None:
    assert sorted(one) == sorted(other)
    for name, vector in one.items():
        np.testing.assert_array_equal(vector, other[name], err_msg=name)


def test_an_object_is_embedded_exactly_as_the_same_bytes_in_a_file(real: RealCollections) -> None:
    assert_same_vectors(vectors_by_name(real.from_s3), vectors_by_name(real.from_files))


@pytest.mark.ray
def test_the_ray_engine_reads_objects_too(real: RealCollections, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.data", reason="the Ray engine needs the `ray` extra")
    from lookalike.ingest.ray import RayEngine

    for name, value in real.env.items():  # a local Ray's workers inherit this environment
        monkeypatch.setenv(name, value)
    with Collection.create(tmp_path / "ray") as col:
        report = col.index([real.bucket.uri("photos/")], engine=RayEngine(num_cpus=2))
        assert (report.added, report.failed) == (real.count, ())
    assert_same_vectors(vectors_by_name(tmp_path / "ray"), vectors_by_name(real.from_files))


def lookalike(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "lookalike", *map(str, args)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result


def test_the_command_searches_by_adds_and_removes_objects(
    real: RealCollections, edited: list[tuple[str, Path, Path]]
) -> None:
    edit, original, copy = next(e for e in edited if e[0] == "text")
    query = f"queries/{original.stem} ({edit}).jpg"
    real.bucket.put(query, copy.read_bytes())
    col = real.from_s3
    found = json.loads(lookalike("search", real.bucket.uri(query), "-c", col, "-k", "3",
                                 "--json", env=real.env).stdout)
    assert found["query"] == real.bucket.uri(query)
    assert found["results"][0]["uri"] == real.bucket.uri(f"photos/{original.name}")

    added = json.loads(lookalike("add", real.bucket.uri(query), "-c", col, "--json",
                                 env=real.env).stdout)
    assert added["added"] == 1 and added["ids"][real.bucket.uri(query)]
    removed = lookalike("remove", real.bucket.uri(f"photos/{original.name}"), "-c", col,
                        env=real.env)
    assert removed.stdout.startswith("Removed 1 image(s)")
    info = json.loads(lookalike("info", "-c", col, "--json", env=real.env).stdout)
    assert (info["images"], info["removed"]) == (real.count, 1)
