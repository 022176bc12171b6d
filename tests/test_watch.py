"""`lookalike watch` follows a folder: new, changed, moved and deleted files within seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import make_variants
from lookalike import Collection


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("the change was not reflected in time")


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_watch_reflects_changes_within_seconds(
    mode: str, sample_dir: Path, tmp_path: Path
) -> None:
    folder, col_dir = tmp_path / "photos", tmp_path / "col"
    make_variants(sample_dir, folder, 4)
    extra = make_variants(sample_dir, tmp_path / "extra", 2, start=10)
    args = ["--poll", "0.2"] if mode == "poll" else []
    watcher = subprocess.Popen(
        [sys.executable, "-m", "lookalike", "watch", str(folder), "-c", str(col_dir),
         "--seconds", "60", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        _eventually(lambda: (col_dir / "main.index").exists(), 60)
        col = Collection.open(col_dir)

        def indexed(path: Path) -> bool:
            return col.find(path) is not None

        new = folder / "new.jpg"
        shutil.copy(extra[0], new)
        assert _eventually(lambda: indexed(new)) < 2.0 + (0.5 if mode == "poll" else 0)
        assert col.search(extra[0], k=1)[0].uri == str(new)

        moved = folder / "sub" / "moved.jpg"
        moved.parent.mkdir()
        (folder / "img0001.jpg").rename(moved)
        _eventually(lambda: indexed(moved) and not indexed(folder / "img0001.jpg"))

        old_id = col.find(folder / "img0002.jpg")
        shutil.copy(extra[1], folder / "img0002.jpg")  # changed content, same name
        _eventually(lambda: col.find(folder / "img0002.jpg") not in (None, old_id))

        (folder / "img0003.jpg").unlink()
        _eventually(lambda: not indexed(folder / "img0003.jpg"))
        assert str(folder / "img0003.jpg") not in {h.uri for h in col.search(new, k=10)}
    finally:
        watcher.terminate()
        _, err = watcher.communicate(timeout=30)
    assert "Traceback" not in err
    assert "watching" in err and "synced" in err
