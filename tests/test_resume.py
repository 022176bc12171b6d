"""kill -9 of a real `lookalike index` mid-run, then a resume: nothing lost, redone or doubled."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_variants
from lookalike import Collection

N_IMAGES = 400


def _committed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def test_kill_9_then_resume(sample_dir: Path, tmp_path: Path) -> None:
    photos, col_dir = tmp_path / "photos", tmp_path / "col"
    make_variants(sample_dir, photos, N_IMAGES)
    command = [sys.executable, "-m", "lookalike", "index", str(photos), "-c", str(col_dir),
               "--batch-size", "4", "--workers", "1", "--threads", "1", "--json"]
    writer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _committed(col_dir / "lookalike.db") < 40 and time.monotonic() < deadline:
        assert writer.poll() is None, "the indexer finished before it could be killed"
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    committed = _committed(col_dir / "lookalike.db")
    assert 40 <= committed < N_IMAGES

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["unchanged"] == committed  # finished work is not redone
    assert report["added"] == N_IMAGES - committed and report["failed"] == []

    col = Collection.open(col_dir)
    with sqlite3.connect(col_dir / "lookalike.db") as conn:
        rows = conn.execute("SELECT uri, status FROM images").fetchall()
    assert len(rows) == N_IMAGES and {s for _, s in rows} == {"active"}
    assert len({u for u, _ in rows}) == N_IMAGES  # nothing doubled
    ids = col.live.live_ids()
    assert len(ids) == len(set(ids.tolist())) == N_IMAGES  # the index agrees with the store
    probe = photos / "img0123.jpg"
    assert col.search(probe, k=1)[0].uri == str(probe)


def test_ctrl_c_stops_cleanly_and_resumes(sample_dir: Path, tmp_path: Path) -> None:
    photos, col_dir = tmp_path / "photos", tmp_path / "col"
    make_variants(sample_dir, photos, N_IMAGES)
    command = [sys.executable, "-m", "lookalike", "index", str(photos), "-c", str(col_dir),
               "--batch-size", "4", "--workers", "1", "--threads", "1", "--json"]
    writer = subprocess.Popen(  # a shell may start children with SIGINT ignored: restore it
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while _committed(col_dir / "lookalike.db") < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.send_signal(signal.SIGINT)
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 130
    assert "Interrupted" in err and "Traceback" not in err
    committed = _committed(col_dir / "lookalike.db")
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    report = json.loads(resumed.stdout)
    assert report["unchanged"] == committed and report["added"] == N_IMAGES - committed
