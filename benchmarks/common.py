"""Helpers shared by the benchmarks: markdown tables, child processes, peak memory, percentiles."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
CHILD_FLAG = "--child"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; numbers should already be formatted as strings."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line describing where the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


# -- child processes: each measured configuration runs in a fresh interpreter --------------------


def run_child(script: str, spec: dict[str, Any], *, timeout: float = 900) -> dict[str, Any]:
    """Run ``script --child SPEC`` in a fresh interpreter and return the JSON it prints last.

    The child's stderr (progress) goes straight to ours.
    """
    done = subprocess.run(
        [sys.executable, script, CHILD_FLAG, json.dumps(spec)], stdout=subprocess.PIPE,
        text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{Path(script).name} child {spec} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_spec(argv: Sequence[str]) -> dict[str, Any] | None:
    """The spec when this interpreter was started by :func:`run_child`, else None."""
    if len(argv) == 3 and argv[1] == CHILD_FLAG:
        return json.loads(argv[2])
    return None


def reply(result: dict[str, Any]) -> None:
    """What a child hands back to :func:`run_child` (the last line of its stdout)."""
    print(json.dumps(result), flush=True)


# -- memory --------------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            found += kids
            stack += kids
    return found


class PeakMemory:
    """Peak memory of this process and of its whole process tree while the block runs.

    ``self_peak`` is the kernel's exact high-water mark of this process (``ru_maxrss``).
    ``tree_peak`` is the largest sum of the resident sizes of this process and all its
    descendants (decoding workers, forkserver), sampled every 50 ms from /proc; shared pages are
    counted once per process, so it is an upper bound on what the tree really used.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.tree_peak = 0
        self.self_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.tree_peak = max(self.tree_peak, self.self_peak)

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = sum(_rss_bytes(pid) for pid in [me, *_descendants(me)])
            self.tree_peak = max(self.tree_peak, total)
            self._stop.wait(self.interval)


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f}"
