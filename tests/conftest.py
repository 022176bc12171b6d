"""Shared fixtures: an isolated environment, real sample photos, edited copies, the real model,
and ``test-tiny``, a fast deterministic model for tests that only need some model."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from lookalike.demo import edited_copies, sample_photos
from lookalike.embedders import Embedder, ModelSpec, register_model
from lookalike.settings import SETTINGS
from lookalike.types import Preprocess
from pgserver import CannotStart, PostgresServer, connect_or_start
from stores import Opener, opener

if TYPE_CHECKING:
    import torch

    from cloud import KafkaBroker, MotoServer
    from lookalike.collection import Collection
    from lookalike.storage import Store

#: The test model's name; collections built with it record it like any other model.
TINY = "test-tiny"
_TINY_SIZE, _TINY_DIM = 32, 64


def _build_tiny(weights: str | None) -> torch.nn.Module:
    from tiny_model import RandomFourierFeatures  # torch only once a test loads the model

    del weights  # nothing to load: the seed is the weights
    return RandomFourierFeatures(_TINY_SIZE, _TINY_DIM).eval()


# Registered like a plugin's model, so it takes the real path: the collection's manifest and
# fingerprint, ONNX export, the runtime, L2 normalisation. Only this process knows it: a CLI
# subprocess cannot open a test-tiny collection.
register_model(ModelSpec(
    name=TINY,
    dim=_TINY_DIM,
    preprocess=Preprocess(size=_TINY_SIZE, resize="squash", mean=(127.5, 127.5, 127.5),
                          std=(127.5, 127.5, 127.5)),
    build=_build_tiny,
    weights_id=lambda weights: "rff-seed0",
    description="Tests only: random Fourier features of an 8x8 thumbnail, 32px, 64-d",
))


def make_variants(sample_dir: Path, folder: Path, n: int, *, seed: int = 7,
                  start: int = 0) -> list[Path]:
    """``n`` distinct small photos: seeded crops of the sample photos, named img<k>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(sample_dir.glob("*.jpg"))]
    paths = []
    for i in range(start, start + n):
        image = sources[i % len(sources)]
        w, h = image.size
        left, top = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        crop = image.crop((left, top, left + w // 2 + 20, top + h // 2 + 20))
        path = folder / f"img{i:04d}.jpg"
        crop.resize((160, 120)).save(path, quality=85)
        paths.append(path)
    return paths


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point every lookalike and torch location at a session folder; the model graph is exported
    once per test session and shared by every test (including CLI subprocesses)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOKALIKE_CACHE_DIR", str(home / "cache"))
        mp.setenv("XDG_DATA_HOME", str(home / "data"))
        mp.setenv("XDG_CONFIG_HOME", str(home / "config"))
        mp.setenv("TORCH_HOME", str(home / "torch"))
        for name in ("LOOKALIKE_CONFIG", "LOOKALIKE_DEBUG",
                     *(s.env for s in SETTINGS if s.name != "cache_dir")):
            mp.delenv(name, raising=False)
        yield home


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's sample photos as JPEGs (read-only: copy before changing anything)."""
    folder = tmp_path_factory.mktemp("samples")
    sample_photos(folder / "photos")
    return folder / "photos"


@pytest.fixture(scope="session")
def edited(
    sample_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[str, Path, Path]]:
    """(edit, original, edited copy) for every sample photo and edit."""
    return edited_copies(sorted(sample_dir.glob("*.jpg")), tmp_path_factory.mktemp("edited"))


@pytest.fixture
def photos(sample_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the sample photos."""
    folder = tmp_path / "photos"
    shutil.copytree(sample_dir, folder)
    return folder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load("efficientnet-lite0")


@pytest.fixture(scope="session")
def tiny_embedder() -> Embedder:
    """The test model, for tests that need vectors from real photos but not good ones."""
    return Embedder.load(TINY)


@pytest.fixture(scope="session")
def sample_collection(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection of the sample photos, indexed once (read-only: copy it to change it)."""
    from lookalike.collection import Collection

    path = tmp_path_factory.mktemp("sample-collection") / "photos.lookalike"
    with Collection.create(path) as col:
        col.index([sample_dir], workers=0)
    return path


@pytest.fixture
def col(sample_collection: Path, tmp_path: Path) -> Collection:
    """A private, writable copy of the sample collection, open."""
    from lookalike.collection import Collection

    path = tmp_path / "photos.lookalike"
    shutil.copytree(sample_collection, path)
    return Collection.open(path)


@pytest.fixture(scope="session")
def tiny_collection(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos indexed with the test model, once (read-only: copy it to change it)."""
    from lookalike.collection import Collection

    path = tmp_path_factory.mktemp("tiny-collection") / "photos.lookalike"
    with Collection.create(path, model=TINY) as col:
        col.index([sample_dir], workers=0)
    return path


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (see pgserver.py). Without one a test that needs
    it skips, saying why; under CI, where `make test` installs PostgreSQL, that is a failure."""
    try:
        server = connect_or_start()
    except CannotStart as exc:
        if os.environ.get("CI"):
            pytest.fail(f"No PostgreSQL server could be started under CI: {exc}")
        pytest.skip(f"No PostgreSQL server could be started: {exc}")
    yield server
    server.stop()


def _cloud_server(start: Callable[[], Any], what: str) -> Iterator[Any]:
    """A server from cloud.py for a fixture: without it a test skips, saying why; under CI, where
    `make test` installs everything, that is a failure."""
    import cloud

    try:
        server = start()
    except cloud.CannotStart as exc:
        if os.environ.get("CI"):
            pytest.fail(f"No {what} could be started under CI: {exc}")
        pytest.skip(f"No {what} could be started: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """A real S3 (and SQS) server for the session: moto's, on loopback (see cloud.py). A test
    puts each variable of ``moto.env`` in its environment (``monkeypatch.setenv``)."""
    import cloud

    yield from _cloud_server(cloud.start_moto, "moto server")


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    """A real Kafka-protocol broker for the session: Tansu, on loopback (see cloud.py)."""
    import cloud

    yield from _cloud_server(cloud.start_kafka, "Kafka broker")


@pytest.fixture
def pg_uri(postgres: PostgresServer) -> Iterator[str]:
    """A superuser postgresql:// URI with a fresh ?schema=, dropped after the test."""
    schema = postgres.fresh_schema()
    yield postgres.uri(schema)
    postgres.drop_schema(schema)


def malformed_exif_image(fmt: str = "JPEG", size: tuple[int, int] = (40, 30)) -> bytes:
    """A small image whose EXIF makes Pillow's orientation step raise (``struct.error``).

    Orientation 6 asks for a rotation, so ``ImageOps.exif_transpose`` re-encodes the EXIF, and
    ImageWidth stored as a signed SHORT of -5 cannot be written back as the unsigned type the TIFF
    spec gives that tag. Raw bytes, because ``Image.Exif`` refuses to write such a block.
    """
    entries = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)),  # Orientation: SHORT 6
               (0x0100, 8, 1, struct.pack("<hH", -5, 0))]  # ImageWidth: SSHORT -5
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    exif = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 160, 90)).save(buffer, fmt, exif=exif)
    return buffer.getvalue()


class CrashingDecoder(ImageFile.ImageFile):
    """A decoder that fails the way a buggy plugin does: not with an OSError."""

    format = "PCX"  # a format lookalike reads, so that Image.open tries it

    def _open(self) -> None:
        self._size, self._mode = (8, 8), "RGB"

    def load(self) -> Any:
        raise KeyError("a plugin bug")


@pytest.fixture
def crashing_plugin() -> Iterator[bytes]:
    """The bytes of a file that :class:`CrashingDecoder` claims, standing in for the PCX
    decoder meanwhile."""
    real = Image.OPEN[CrashingDecoder.format]
    Image.register_open(CrashingDecoder.format, CrashingDecoder,
                        lambda prefix: prefix[:8] == b"CRASHING")
    yield b"CRASHING" + bytes(64)
    Image.OPEN[CrashingDecoder.format] = real


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, timeout: float = 120.0,
               alive: Callable[[], bool] = lambda: True) -> None:
    """Poll ``url``/readyz until it answers 200 (TimeoutError after ``timeout`` seconds, or
    AssertionError as soon as ``alive()`` is false)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert alive(), f"the server at {url} died while starting"
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


class LiveServer:
    """`lookalike serve`'s application on a real uvicorn server, on loopback, in a thread."""

    def __init__(self, app: object) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 120.0) -> LiveServer:
        self.thread.start()
        wait_ready(self.url, timeout, self.thread.is_alive)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture
def start_server() -> Iterator[Callable[..., LiveServer]]:
    """Start servers over collections: ``start_server(path, api_key=..., ...)``; all stopped
    at the end of the test."""
    from lookalike.server import ServeConfig, create_app

    servers: list[LiveServer] = []

    def start(collection: Path, **config: object) -> LiveServer:
        server = LiveServer(create_app(ServeConfig(collection=str(collection), **config)))
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def served_copy(sample_collection: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the sample collection."""
    path = tmp_path / "photos.lookalike"
    shutil.copytree(sample_collection, path)
    return path


@pytest.fixture
def live_server(served_copy: Path, start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server over a private copy of the sample collection."""
    server = start_server(served_copy)
    server.collection_path = served_copy  # type: ignore[attr-defined]
    return server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores on one fresh database; each call is another connection to it."""
    uri = request.getfixturevalue("pg_uri") if request.param == "postgresql" else None
    yield from opener(request.param, tmp_path, uri)


@pytest.fixture
def store(open_db: Opener) -> Store:
    return open_db()
