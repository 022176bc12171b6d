"""A messy photo folder and a hostile disk, through the real `lookalike` command (issue 13):
names of any bytes, FIFOs and devices, broken manifests, a file for a collection, a read-only
collection, a full disk. Each gets one clear message, and nothing committed is lost."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import TINY
from lookalike.collection import Collection
from lookalike.errors import DiskWriteError, ReadOnlyCollectionError
from lookalike.storage import NewImage
from test_cli import run

NAMES = [b"plain.jpg", b"\xff\xfe.jpg", b"caf\xe9.jpg", b"new\nline.jpg", b"tab\there.jpg"]
IS_ROOT = os.geteuid() == 0
LOOKALIKE = [sys.executable, "-m", "lookalike"]


def photo(path: Path | bytes, seed: int) -> None:
    pixels = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((96, 72), Image.Resampling.BICUBIC).save(path, "JPEG")


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder whose file names are not all UTF-8 (one has a newline), a FIFO named on the
    command line beside it, /dev/zero too: indexed once by the real command."""
    root = tmp_path_factory.mktemp("messy")
    folder = root / "photos"
    folder.mkdir()
    for n, name in enumerate(NAMES):
        photo(os.path.join(bytes(folder), name), n)
    os.mkfifo(root / "fifo.jpg")
    col = root / "col"
    # A FIFO used to hang this command, holding the writer lock; /dev/zero read until
    # MemoryError; a name that is not UTF-8 failed every batch it was in.
    result = subprocess.run(
        [*LOOKALIKE, "index", str(folder), str(root / "fifo.jpg"), "/dev/zero", "-c", str(col),
         "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["added"] == len(NAMES)
    assert {f["uri"]: f["reason"].split(",")[0] for f in report["failed"]} == {
        str(root / "fifo.jpg"): "is a FIFO", "/dev/zero": "is a character device"}
    return folder, col


def shown(folder: Path, name: bytes) -> str:
    """How lookalike shows a name: bytes that are not UTF-8 as \\xNN."""
    return os.fsdecode(folder) + "/" + name.decode("utf-8", "backslashreplace")


def test_names_of_any_bytes_are_found_again_and_shown_escaped(messy: tuple[Path, Path]) -> None:
    folder, col = messy
    raw = os.path.join(os.fsdecode(folder), os.fsdecode(b"\xff\xfe.jpg"))
    hits = json.loads(run("search", raw, "-c", col, "-k", "10", "--json").stdout)["results"]
    assert {h["uri"] for h in hits} == {shown(folder, n) for n in NAMES if n != b"\xff\xfe.jpg"}
    lines = run("search", raw, "-c", col, "-k", "10").stdout.splitlines()
    assert len(lines) == len(NAMES) - 1  # one line a result, whatever the names hold
    assert any(line.endswith("/new\\nline.jpg") for line in lines)
    assert any(line.endswith("/caf\\xe9.jpg") for line in lines)

    removed = run("remove", raw, "-c", col).stdout
    assert removed.startswith("Removed 1 image(s)")
    again = run("remove", raw, "-c", col, check=False)
    assert again.returncode == 2 and "\\udc" not in again.stderr
    assert "No indexed image '" + shown(folder, NAMES[1]) + "'" in again.stderr
    info = json.loads(run("info", "-c", col, "--json", "--failures").stdout)
    assert info["images"] == len(NAMES) - 1 and info["path"] == str(col)
    assert {f["uri"] for f in info["failures"]} == {str(folder.parent / "fifo.jpg"), "/dev/zero"}


def test_info_shows_the_collection_as_an_absolute_path(messy: tuple[Path, Path]) -> None:
    _, col = messy
    result = subprocess.run([*LOOKALIKE, "info", "-c", col.name, "--json"], cwd=col.parent,
                            capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout)["path"] == str(col)


def test_integers_on_the_command_line_are_plain_decimal_digits(
    messy: tuple[Path, Path]
) -> None:
    folder, col = messy
    plain = folder / "plain.jpg"
    assert run("search", plain, "-c", col, "-k", "2").returncode == 0
    for option in (["-k", "1_0"], ["-k", "+2"], ["--qe", " 1"], ["--id", "0x1"]):
        args = option if option[0] == "--id" else [plain, *option]
        result = run("search", *args, "-c", col, check=False)
        assert result.returncode == 2 and "is not an integer in decimal digits" in result.stderr


def test_a_file_given_as_the_collection_is_misuse(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    photo(tmp_path / "p.jpg", 0)
    for where in ("afile", "afile/sub"):
        result = run("index", tmp_path / "p.jpg", "-c", tmp_path / where, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "not a collection folder" in result.stderr or "Not a directory" in result.stderr
    for command in (("info",), ("search", "--id", "1"), ("remove", "1")):
        result = run(*command, "-c", tmp_path / "afile", check=False)
        assert result.returncode == 2 and "is a file, not a collection folder" in result.stderr


@pytest.mark.parametrize("damage, message", [
    (lambda m: [], "is not a lookalike manifest (not an object)"),
    (lambda m: {"format_version": 2}, "has no 'model' field"),
    (lambda m: {**m, "model": {**m["model"], "dim": 512}}, "makes 512-d vectors, but"),
    (lambda m: {}, "its format_version is None, not a version number"),
    (lambda m: {**m, "format_version": "2"}, "its format_version is '2', not a version number"),
    (lambda m: "not json{", "is damaged (not JSON"),
])
def test_a_damaged_manifest_is_one_clear_error(damage, message: str, sample_collection: Path,
                                               tmp_path: Path) -> None:
    col = tmp_path / "col"
    shutil.copytree(sample_collection, col)
    manifest = col / "manifest.json"
    damaged = damage(json.loads(manifest.read_text()))
    manifest.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    for args in (("info",), ("search", "--id", "1")):
        result = run(*args, "-c", col, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert message in result.stderr and "restore it from a backup" in result.stderr.lower()


@contextlib.contextmanager
def mounted(*args: str) -> Iterator[None]:
    """``mount ARGS`` for the block (root only); always unmounted after."""
    target = args[-1]
    subprocess.run(["mount", *args], check=True, capture_output=True)
    try:
        yield
    finally:
        gc.collect()  # a failed test's traceback may still hold files open on it
        for _ in range(20):
            if subprocess.run(["umount", target], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:  # still busy: detach it now, the kernel frees it once the last file closes
            subprocess.run(["umount", "--lazy", target], check=True, capture_output=True)


needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting a read-only view or a small "
                                "disk needs root (CI runs as root)")


@needs_root
def test_a_read_only_collection_is_searched_and_refuses_changes_clearly(
    tiny_collection: Path, sample_dir: Path, tmp_path: Path, start_server: Callable[..., Any]
) -> None:
    view = tmp_path / "view"
    view.mkdir()
    with mounted("--bind", "-o", "ro", str(tiny_collection), str(view)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        col = Collection.open(view, model=TINY)
        try:
            assert col.info().images == len(list(sample_dir.glob("*.jpg")))
            assert col.search(sample_dir / "moon.jpg", k=1)[0].uri == str(sample_dir / "moon.jpg")
            with pytest.raises(ReadOnlyCollectionError, match="can be searched, not written"):
                col.remove([1])
        finally:
            col.close()
        server = start_server(view)
        hits = httpx.get(f"{server.url}/search/similar/1?k=2").json()["results"]
        assert len(hits) == 2
        thumbnail = httpx.get(f"{server.url}/images/1/thumbnail?size=128")  # made, not cached
        assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\xff\xd8")
        refused = httpx.delete(f"{server.url}/images/1")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "read_only"
        assert not server.app.state.service.collection.indexes.save_delta()  # what stop does
        server.stop()
        assert not list(view.glob("*-shm")) and not list(view.glob("*-wal"))


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
    return filler


@needs_root
def test_a_full_disk_is_a_clear_error_and_indexing_resumes_once_space_is_freed(
    sample_dir: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    more = tmp_path / "more"
    more.mkdir()
    for n in range(40):
        photo(more / f"{n:02d}.jpg", 100 + n)
    with mounted("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)):
        col = Collection.create(disk / "col", model=TINY)
        try:
            col.index([sample_dir], workers=0)
            filler = fill(disk)
            with pytest.raises(DiskWriteError, match="delta.index: No space left on device"):
                col.index([more], workers=0)  # its rows fit in the WAL; the delta does not
            # A batch the WAL cannot hold: refused whole, nothing of it stored.
            generation, counts = col.store.generation(), col.store.counts()
            failed = [NewImage(f"/nowhere/{n}.jpg", 1, 1, f"h{n}", error="x" * 4000)
                      for n in range(1000)]
            with pytest.raises(DiskWriteError, match="lookalike.db: database or disk is full"):
                col.store.write(failed)
            assert (col.store.generation(), col.store.counts()) == (generation, counts)
            filler.unlink()
            col.close()  # SQLite drops its shared-memory file; opening makes it again
            filler = fill(disk)
            with pytest.raises(DiskWriteError, match="even a read needs a few KB"):
                Collection.open(disk / "col", model=TINY)
            filler.unlink()
            col = Collection.open(disk / "col", model=TINY)
            report = col.index([more], workers=0)
            assert report.added == 40
            assert col.verify().ok
            assert col.search(more / "07.jpg", k=1)[0].uri == str(more / "07.jpg")
        finally:
            col.close()
