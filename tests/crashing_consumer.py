"""A consumer that kills itself (SIGKILL, as `kill -9` does) at one point of its first batch
that writes: ``before-commit`` (nothing of the batch committed) or ``after-commit`` (committed,
not yet acknowledged). For the crash tests in test_stream.py.

Usage: python crashing_consumer.py COLLECTION SOURCE WHEN
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import conftest  # noqa: E402,F401  (registers the test-tiny model)
from lookalike import Collection  # noqa: E402
from lookalike.queues import open_source  # noqa: E402
from lookalike.stream import Consumer  # noqa: E402


def main() -> None:
    folder, spec, when = sys.argv[1:4]
    col = Collection.open(folder)
    commit = col.store.apply_events

    def crashing(batch: object) -> object:
        if when == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        written = commit(batch)  # type: ignore[arg-type]
        print("COMMITTED", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return written

    col.store.apply_events = crashing  # type: ignore[method-assign]
    Consumer(col, open_source(spec), batch_size=64, wait=1.0).run(threading.Event())


if __name__ == "__main__":
    main()
