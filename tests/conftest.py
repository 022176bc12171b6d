"""Shared fixtures: an isolated environment, real sample photos, edited copies, the real model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.demo import edited_copies, sample_photos


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
        for name in ("LOOKALIKE_COLLECTION", "LOOKALIKE_CONFIG", "LOOKALIKE_MODEL",
                     "LOOKALIKE_INDEX", "LOOKALIKE_DEBUG", "LOOKALIKE_WORKERS"):
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
def embedder():
    from lookalike.embedders import Embedder

    return Embedder.load("efficientnet-lite0")
