"""`lookalike watch`: keep a collection in step with folders as files come, change, move and go.

File-system events (inotify through watchdog, or polling) mark paths dirty; after a short settle
time the dirty paths are synced in one batch: existing images are indexed (unchanged ones are
skipped), paths that are gone are removed, and a file caught half-written is retried when its
next change arrives.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from .collection import Collection
from .errors import MissingDependencyError
from .imaging import IMAGE_EXTENSIONS

SETTLE_SECONDS = 0.3


def _relevant(path: str) -> bool:
    name = os.path.basename(path)
    if name.startswith("."):
        return False
    ext = os.path.splitext(name)[1].lower()
    return ext in IMAGE_EXTENSIONS or ext == "" or os.path.isdir(path)


class _Dirty:
    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._lock = threading.Lock()
        self.changed = threading.Event()

    def add(self, *paths: str) -> None:
        relevant = [p for p in paths if p and _relevant(p)]
        if relevant:
            with self._lock:
                self._paths.update(relevant)
            self.changed.set()

    def take(self) -> list[str]:
        with self._lock:
            paths, self._paths = sorted(self._paths), set()
            self.changed.clear()
        return paths


def watch(col: Collection, paths: Sequence[str], *, poll_seconds: float | None = None,
          seconds: float | None = None, report: Callable[[str], None] = print) -> None:
    """Sync ``paths`` once, then follow their changes until Ctrl-C or ``seconds`` pass."""
    try:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver
    except ImportError:
        raise MissingDependencyError(
            "watchdog", "lookalike watch", "pip install watchdog"
        ) from None

    roots = [os.path.abspath(p) for p in paths]
    dirty = _Dirty()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type in ("opened", "closed_no_write"):
                return
            dirty.add(str(event.src_path), str(getattr(event, "dest_path", "") or ""))

    observer = PollingObserver(timeout=poll_seconds) if poll_seconds else Observer()
    for root in roots:
        observer.schedule(Handler(), root, recursive=True)
    observer.start()  # before the first sync, so no change made during it is missed
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        first = col.index(roots, workers=0, show_progress=False)
        report(f"watching {', '.join(roots)}: {first.added + first.updated} indexed, "
               f"{first.unchanged} unchanged, {first.removed} removed, {len(first.failed)} failed")
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            if not dirty.changed.wait(wait):
                continue
            time.sleep(SETTLE_SECONDS)  # let a burst of events (a copy, a move) finish
            changed = dirty.take()
            result = col.sync(changed)
            report(f"synced {len(changed)} path(s): {result.added} added, {result.updated} "
                   f"updated, {result.removed} removed, {len(result.failed)} failed")
            for failure in result.failed:
                report(f"  failed: {failure.uri}: {failure.reason}")
    finally:
        observer.stop()
        observer.join()
