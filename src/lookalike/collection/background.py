"""Compaction in a process of its own, for the long-running processes (a server, a consumer):
the build runs at low priority on its own interpreter, so the caller keeps its cores and the GIL
and goes on searching or consuming meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys


class BackgroundCompaction:
    """Starts `lookalike compact` on a collection when one is due, one at a time. Another
    process sharing the collection may already be compacting: then this one exits at once
    (locked)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self._folder = folder
        self._process: subprocess.Popen[bytes] | None = None
        self.completed = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def poll(self, due: bool) -> None:
        """Call now and then with whether a compaction is due (``Collection.serve_upkeep``)."""
        if self._process is not None:
            if self._process.poll() is None:
                return
            self.completed += self._process.returncode == 0
            self._process = None
            return  # give the reload a round to pick up the new main index
        if due:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "lookalike", "compact", "-c", os.fspath(self._folder)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
