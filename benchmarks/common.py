"""Helpers shared by the benchmarks: markdown tables, child processes, peak memory, percentiles."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
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
            names = (line.split(":", 1)[1] for line in fh if line.startswith("model name"))
            cpu = next(names).strip()
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


# -- memory and CPU ------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_sample(pid: int) -> tuple[int, float]:
    """(resident bytes, CPU seconds so far) of one process; zeros once it has gone."""
    rss = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                    break
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return rss, (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return rss, 0.0


def _high_water_mark() -> int:
    """Peak resident bytes of this process image."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def _system_busy_seconds() -> float:
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / _TICK


class Meter:
    """Peak memory of this process and its process tree while the block runs, and CPU load.

    ``self_peak`` is the kernel's exact high-water mark of this process (VmHWM; not
    ``ru_maxrss``, which after fork + exec also remembers the parent's size).
    ``tree_peak`` is the largest sum of the resident sizes of this process and all its
    descendants (decoding workers), sampled every 50 ms from /proc; shared pages are
    counted once per process, so it is an upper bound on what the tree really used.
    ``other_cores`` is the CPU that other processes on the machine used meanwhile, in cores
    (system busy time minus this tree's, over the wall time): the benchmark's noise floor.
    ``tree_cpu`` is the CPU seconds this tree used (a process's last sample if it exited).
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.tree_peak = 0
        self.self_peak = 0
        self.other_cores = 0.0
        self.tree_cpu = 0.0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Meter:
        self._busy0, self._wall0 = _system_busy_seconds(), time.monotonic()
        self._cpu0 = proc_sample(os.getpid())[1]
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()
        wall = time.monotonic() - self._wall0
        ours = sum(self._cpu.values()) - self._cpu0
        others = _system_busy_seconds() - self._busy0 - ours
        self.other_cores = max(0.0, others / wall) if wall > 0 else 0.0
        self.tree_cpu = ours  # CPU seconds this process and its descendants used meanwhile
        self.self_peak = _high_water_mark()
        self.tree_peak = max(self.tree_peak, self.self_peak)

    def _sample_once(self) -> None:
        me = os.getpid()
        total = 0
        for pid in [me, *_descendants(me)]:
            rss, cpu = proc_sample(pid)
            total += rss
            self._cpu[pid] = max(cpu, self._cpu.get(pid, 0.0))
        self.tree_peak = max(self.tree_peak, total)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sample_once()
            self._stop.wait(self.interval)


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f}"
