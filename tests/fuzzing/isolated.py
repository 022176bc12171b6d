"""Decoding hostile files in a child process, so that a file which eats memory, hangs inside C
code or kills the interpreter is one finding, not the end of the test run (or of the machine).

The child caps its address space (``RLIMIT_AS``) at what it uses once its imports are done plus
``memory_mb``: a decompression bomb then fails at once with ``MemoryError`` (a crasher, see
:mod:`.loop`) instead of taking gigabytes. The parent kills a child whose current file has not
finished after ``hang_s``, records that file as a crasher, and starts a new child after it.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .loop import (
    TIMEOUT_S,
    Crasher,
    FuzzResult,
    crash,
    decode_target,
    describe,
    outcome,
    quiet_stderr,
    run_here,
)
from .loop import shrink as shrink_here
from .loop import signature as signature_of
from .mutate import mutant

MEMORY_MB = 1024  # headroom over the child's imports: a 4 MP decode needs under 100 MB
HANG_S = 20.0


@dataclass(frozen=True)
class Verdict:
    """What decoding one file did: ``decoded``, ``refused`` (a DecodeError) or ``crash``."""

    kind: str
    detail: str = ""


def fuzz(seconds: float, run_seed: int, *, start: int = 0, shrink: bool = True,
         timeout: float = TIMEOUT_S, memory_mb: int = MEMORY_MB,
         hang_s: float = HANG_S) -> FuzzResult:
    """Decode mutants ``start, start+1, ...`` of ``run_seed`` for ``seconds`` in child processes
    with limits; returns the executions and one crasher per kind of crash."""
    total = FuzzResult(run_seed)
    began = time.monotonic()
    index = start
    while (left := seconds - (time.monotonic() - began)) > 0.2:
        messages, death, at = _child_run(_fuzz_job, (left, run_seed, index, timeout),
                                         memory_mb, hang_s)
        if death is None:
            finished = messages[-1][1]
            total.merge(finished)
            index += finished.executions
            continue
        if at < index:
            raise RuntimeError(f"The fuzzing child process failed before its first mutant: "
                               f"{death}; run `python -m fuzzing 5` in tests/ to see why.")
        part = FuzzResult(run_seed, executions=at - index)  # what ran before it died
        for _, crasher in messages:
            part.add(crasher)
        total.merge(part)
        m = mutant(run_seed, at)  # the child died on mutant ``at``: a crasher of its own
        total.executions += 1
        total.add(Crasher(death, death, "", m.data, m.seed.name, m.seed.suffix, at, m.edits,
                          time.monotonic() - began))
        index = at + 1
    total.seconds = time.monotonic() - began
    if shrink:
        total.crashers = _shrunk(total.crashers, memory_mb, hang_s)
    return total


def check(files: list[bytes], *, timeout: float = TIMEOUT_S, memory_mb: int = MEMORY_MB,
          hang_s: float = HANG_S, max_pixels: int | None = None) -> list[Verdict]:
    """Decode each file in a child process with limits: what each one did."""
    verdicts: dict[int, Verdict] = {}
    start = 0
    while start < len(files):
        messages, death, at = _child_run(_check_job, (files, start, timeout, max_pixels),
                                         memory_mb, hang_s)
        verdicts.update((m[1], m[2]) for m in messages if m[0] == "verdict")
        if death is None:
            break
        if at < start:
            raise RuntimeError(f"The decoding child process failed before its first file: "
                               f"{death}.")
        verdicts[at] = Verdict("crash", death)
        start = at + 1
    return [verdicts[n] for n in range(len(files))]


# -- in the child ---------------------------------------------------------------------------


def _fuzz_job(send: Callable[[tuple[Any, ...]], None], progress: Any, seconds: float,
              run_seed: int, start: int, timeout: float) -> FuzzResult:
    return run_here(seconds, run_seed, start=start, timeout=timeout, progress=progress,
                    report=lambda crasher: send(("crasher", crasher)))


def _check_job(send: Callable[[tuple[Any, ...]], None], progress: Any, files: list[bytes],
               start: int, timeout: float, max_pixels: int | None) -> None:
    target = decode_target(max_pixels) if max_pixels else decode_target()
    for n in range(start, len(files)):
        progress.value = n
        with quiet_stderr():
            exc = outcome(target, files[n], timeout)
        found = crash(exc)
        if found is not None:
            verdict = Verdict("crash", f"{signature_of(found)}: {describe(found)}")
        else:
            verdict = Verdict("decoded") if exc is None else Verdict("refused", str(exc))
        send(("verdict", n, verdict))


def _shrink_job(send: Callable[[tuple[Any, ...]], None], progress: Any,
                crashers: list[Crasher]) -> None:
    for n, crasher in enumerate(crashers):
        progress.value = n
        send(("shrunk", n, shrink_here(crasher)))


def _child(job: Callable[..., Any], args: tuple[Any, ...], conn: Any, progress: Any,
           memory_mb: int) -> None:
    import lookalike.imaging  # noqa: F401 - imports first, then the cap on what decoding may add

    _cap_memory(memory_mb)
    conn.send(("done", job(conn.send, progress, *args)))
    conn.close()


def _cap_memory(memory_mb: int) -> None:
    try:
        import resource

        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError):
        return  # not Linux: no cap, the hang watchdog still holds
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = used + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))


# -- in the parent --------------------------------------------------------------------------


def _child_run(job: Callable[..., Any], args: tuple[Any, ...], memory_mb: int,
               hang_s: float) -> tuple[list[tuple[Any, ...]], str | None, int]:
    """Run ``job`` in a child: the messages it sent (the last is ``("done", value)`` when it
    finished), how it died (None when it finished) and the last progress value it set."""
    context = multiprocessing.get_context("spawn")
    progress = context.Value("q", -1, lock=False)
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(job, args, writer, progress, memory_mb),
                            daemon=True)
    child.start()
    writer.close()
    messages: list[tuple[Any, ...]] = []
    last, since, death = progress.value, time.monotonic(), None
    try:
        while not messages or messages[-1][0] != "done":
            if reader.poll(0.2):
                try:
                    messages.append(reader.recv())
                except EOFError:
                    break
                continue
            if not child.is_alive():
                break
            if progress.value != last:
                last, since = progress.value, time.monotonic()
            elif time.monotonic() - since > hang_s:
                child.kill()
                death = f"hang: still decoding after {hang_s:g} s"
                break
    finally:
        reader.close()
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    if death is None and (not messages or messages[-1][0] != "done"):
        code = child.exitcode or 0
        death = (f"killed by {signal.Signals(-code).name}" if code < 0
                 else f"the child process exited with status {code}")
    return messages, death, progress.value


def _shrunk(crashers: list[Crasher], memory_mb: int, hang_s: float) -> list[Crasher]:
    """Each crasher shrunk in a child (one the parent recorded, a hang or a dead child, is kept
    whole: shrinking it would mean more of the same)."""
    candidates = [c for c in crashers if c.traceback]
    if not candidates:
        return crashers
    messages, _, _ = _child_run(_shrink_job, (candidates,), memory_mb, hang_s)
    shrunk = {m[2].signature: m[2] for m in messages if m[0] == "shrunk"}
    return [shrunk.get(c.signature, c) for c in crashers]
