"""Checking another engine's indexing run: what it committed (in its SQLite store) against the
local engine's, and which processes it started (a Ray or Spark engine's workers), for the tests
that compare engines and those that kill a run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lookalike import Collection
    from lookalike.types import IngestReport


def committed_rows(db: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(db, timeout=5) as conn:
        return conn.execute("SELECT uri, id, status FROM images").fetchall()


def stored(col: Collection) -> dict[str, tuple[str, np.ndarray | None]]:
    """uri -> (status, stored vector) of every image row."""
    return {uri: (status, col.store.vector(image_id))
            for uri, image_id, status in committed_rows(col.path / "lookalike.db")}


def same_as_local(got: dict[str, tuple[str, np.ndarray | None]],
                  expected: dict[str, tuple[str, np.ndarray | None]], report: IngestReport,
                  local_report: IngestReport) -> dict[str, str]:
    """Assert the same files, the same outcome and the same vectors as the local engine's, and
    the same failure reasons; returns those reasons by file name."""
    assert got.keys() == expected.keys()
    for uri, (status, vector) in expected.items():
        assert got[uri][0] == status, uri
        if vector is None:
            assert got[uri][1] is None, uri
            continue
        other = got[uri][1]
        assert other is not None
        assert float(np.abs(vector - other).max()) <= 1e-5, uri
    reasons = {Path(f.uri).name: f.reason for f in report.failed}
    assert reasons == {Path(f.uri).name: f.reason for f in local_report.failed}
    return reasons


def descendants(pid: int) -> set[int]:
    found, stack = set(), [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    kids = {int(k) for k in fh.read().split()}
            except OSError:
                continue
            stack += kids - found
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_committed(db: Path, at_least: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the indexer finished before it could be stopped"
        try:
            count = len(committed_rows(db)) if db.exists() else 0
        except sqlite3.OperationalError:  # schema not created yet, or busy
            count = 0
        if count >= at_least:
            return count
        time.sleep(0.02)
    raise TimeoutError(f"fewer than {at_least} images committed after {timeout} s")
