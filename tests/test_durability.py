"""Fault injection: real writer processes killed with SIGKILL at random moments, 30 times.

After every kill the collection must open, answer, hold every acknowledged image exactly once
and no acknowledged deletion, and its index must agree with its store.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from conftest import make_variants
from lookalike import Collection

ROUNDS = 30
WRITER = Path(__file__).with_name("fault_writer.py")


def _run_and_kill(args: list[str], delay: float) -> list[str]:
    writer = subprocess.Popen([sys.executable, str(WRITER), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in writer.stdout:  # type: ignore[union-attr]
            if line.endswith("\n"):  # a kill can tear the last line: it never acknowledged
                lines.append(line.rstrip("\n"))
            if line.startswith("READY"):
                ready.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert ready.wait(120), writer.stderr.read() if writer.poll() is not None else "no READY"
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    reader.join()
    return lines


def test_sigkill_at_random_points_loses_nothing_acknowledged(
    sample_dir: Path, tmp_path: Path
) -> None:
    pool, work, col_dir = tmp_path / "pool", tmp_path / "work", tmp_path / "col"
    make_variants(sample_dir, pool, 40)
    work.mkdir()
    rng = random.Random(2026)
    acked: set[str] = set()
    deleted: dict[int, str] = {}
    operations = 0
    for round_ in range(ROUNDS):
        lines = _run_and_kill([str(col_dir), str(pool), str(work), str(round_)],
                              delay=rng.uniform(0.05, 1.5))
        for line in lines:
            parts = line.split(" ")
            if parts[:2] == ["ACK", "add"]:
                acked.add(parts[2])
            elif parts[:2] == ["BEGIN", "del"]:
                acked.discard(parts[3])  # deleted or not: a kill may land mid-delete
            elif parts[:2] == ["ACK", "del"]:
                deleted[int(parts[2])] = parts[3]
            operations += line.startswith("ACK")
        _check(col_dir, acked, deleted)
    assert operations >= 2 * ROUNDS  # the kills landed amid real work, not before any


def _check(col_dir: Path, acked: set[str], deleted: dict[int, str]) -> None:
    col = Collection.open(col_dir)
    report = col.verify()
    assert report.ok, report.problems
    with sqlite3.connect(col_dir / "lookalike.db") as db:
        active = db.execute("SELECT id, uri FROM images WHERE status = 'active'").fetchall()
    uris = [u for _, u in active]
    assert len(uris) == len(set(uris)), "an image is stored twice"
    assert acked <= set(uris), f"acknowledged images lost: {sorted(acked - set(uris))[:3]}"
    live = col.live.live_ids()
    assert len(live) == len(set(live.tolist())), "an id is indexed twice"
    assert set(live.tolist()) == {i for i, _ in active}, "index and store disagree"
    assert not set(deleted) & set(live.tolist()), "a deleted image is searchable"
    if active:
        some = active[len(active) // 2][0]
        query = col.store.vector(some)
        hits = col.search_vector(query, k=3)  # type: ignore[arg-type]
        best = col.store.vector(hits[0].image_id)  # itself, or a copy of the same file
        assert best is not None and np.allclose(best, query, atol=1e-6)
        assert not {h.image_id for h in hits} & set(deleted)
    assert np.isfinite([h.score for h in col.search_vector(
        np.ones(col.dim, np.float32) / np.sqrt(col.dim), k=5)]).all()
    col.close()
