"""Watching an indexing run in another process: what it committed (in its SQLite store) and
which processes it started (a Ray or Spark engine's workers), for the tests that kill it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path


def committed_rows(db: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(db, timeout=5) as conn:
        return conn.execute("SELECT uri, id, status FROM images").fetchall()


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
