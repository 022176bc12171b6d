"""The fast loop: decode mutants for a while and keep every distinct crasher.

A crasher is a mutant for which decoding

- raises anything but ``DecodeError`` (the one exception the decode-safety boundary may let out);
- needs more memory than the process may have (a ``MemoryError``, even one the boundary turned
  into a ``DecodeError``: :mod:`.isolated` caps the address space, so this is a file that would
  have taken gigabytes);
- runs past the per-mutant time limit, or kills the process (see :mod:`.isolated`).

Crashers are told apart by their signature, the exception's type and the innermost frame that
raised it; the first of each kind is kept, then shrunk when that is quick.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from lookalike.types import Preprocess

from .layout import PNG_SIGNATURE, fix_png_crcs
from .mutate import mutant

#: A decoder under test: takes the bytes of a file, returns or raises.
Target = Callable[[bytes], object]
MAX_PIXELS = 1 << 22  # what the decoder is told to allow: 4 MP, so a mutant stays cheap
TIMEOUT_S = 5.0
PREPROCESS = Preprocess(size=32, resize="squash", mean=(127.5,) * 3, std=(127.5,) * 3)  # test-tiny


class MutantTimeout(BaseException):
    """Decoding one mutant ran past its time limit (a BaseException: no ``except Exception`` in
    the code under test can swallow it)."""


@dataclass(frozen=True)
class Crasher:
    """The first mutant found of one kind of crash, and how to make it again."""

    signature: str  # e.g. "struct.error at PIL/TiffImagePlugin.py:796 in _pack"
    error: str
    traceback: str
    data: bytes
    seed_name: str
    suffix: str
    index: int  # mutant(run_seed, index) makes it again (before shrinking)
    edits: tuple[str, ...]
    found_after_s: float


@dataclass
class FuzzResult:
    run_seed: int
    executions: int = 0
    seconds: float = 0.0
    decoded: int = 0
    refused: int = 0
    crashers: list[Crasher] = field(default_factory=list)
    hits: Counter[str] = field(default_factory=Counter)  # crashes per signature

    @property
    def per_second(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0

    def add(self, crasher: Crasher) -> None:
        self.hits[crasher.signature] += 1
        if self.hits[crasher.signature] == 1:
            self.crashers.append(crasher)

    def merge(self, other: FuzzResult) -> None:
        self.executions += other.executions
        self.decoded += other.decoded
        self.refused += other.refused
        for crasher in other.crashers:
            if crasher.signature not in self.hits:
                self.crashers.append(crasher)
        self.hits.update(other.hits)


def decode_target(max_pixels: int = MAX_PIXELS) -> Target:
    """What uploads and indexing do with a file's bytes: decode to model input."""
    from lookalike.imaging import decode_bytes

    return lambda data: decode_bytes(data, PREPROCESS, max_pixels)


def outcome(target: Target, data: bytes, timeout: float = TIMEOUT_S) -> BaseException | None:
    """What decoding ``data`` raised (None when it decoded)."""
    try:
        with _time_limit(timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target(data)
    except (Exception, MutantTimeout) as exc:
        return exc
    return None


def crash(exc: BaseException | None) -> BaseException | None:
    """The crash in an outcome, if it is one: any exception but a DecodeError, or the
    MemoryError a DecodeError was made from."""
    from lookalike.errors import DecodeError

    if exc is None:
        return None
    if not isinstance(exc, DecodeError):
        return exc
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, MemoryError) else None


def describe(found: BaseException) -> str:
    """A crash in a line: the exception's type and message."""
    if isinstance(found, MemoryError):
        return "MemoryError: needs more memory than the decoding process may have"
    return f"{type(found).__name__}: {found}"


def signature(exc: BaseException) -> str:
    """The kind of a crash: its type and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "?"
    if frames:
        last = frames[-1]
        path = last.filename.replace(os.sep, "/")
        for marker in ("site-packages/", "/src/", "/lib/python"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        where = f"{path}:{last.lineno} in {last.name}"
    kind = type(exc)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return f"{name} at {where}"


def run_here(seconds: float, run_seed: int, *, start: int = 0, timeout: float = TIMEOUT_S,
             progress: Any = None, report: Callable[[Crasher], None] | None = None,
             target: Target | None = None) -> FuzzResult:
    """Decode mutants ``start, start+1, ...`` of ``run_seed`` for ``seconds`` in this process
    (:func:`fuzzing.isolated.fuzz` runs it in a child, with limits). ``progress.value`` is set to
    each mutant's index before it is decoded; ``report`` hears of each new kind of crasher."""
    target = target or decode_target()
    result = FuzzResult(run_seed)
    began = time.monotonic()
    index = start
    with quiet_stderr():
        while time.monotonic() - began < seconds:
            if progress is not None:
                progress.value = index
            m = mutant(run_seed, index)
            index += 1
            exc = outcome(target, m.data, timeout)
            result.executions += 1
            found = crash(exc)
            if found is None:
                if exc is None:
                    result.decoded += 1
                else:
                    result.refused += 1
                continue
            crasher = Crasher(signature(found), describe(found), _traceback(found, exc), m.data,
                              m.seed.name, m.seed.suffix, m.index, m.edits,
                              time.monotonic() - began)
            result.add(crasher)
            if report is not None and result.hits[crasher.signature] == 1:
                report(crasher)
    result.seconds = time.monotonic() - began
    return result


def _traceback(found: BaseException, exc: BaseException) -> str:
    text = "".join(traceback.format_exception(found))
    if found is not exc:  # a MemoryError the boundary turned into a DecodeError: both
        text += "\nwhich the boundary turned into\n" + "".join(traceback.format_exception(exc))
    return text


def shrink(crasher: Crasher, *, target: Target | None = None, budget: int = 400,
           seconds: float = 3.0) -> Crasher:
    """Cut spans out of the crasher while it still crashes the same way (at most ``budget``
    tries and ``seconds``: a crasher is kept whole rather than slowly minimised)."""
    target = target or decode_target()
    data, step = crasher.data, max(1, len(crasher.data) // 2)
    deadline = time.monotonic() + seconds
    with quiet_stderr():
        while step >= 1 and budget > 0 and time.monotonic() < deadline:
            at, shrank = 0, False
            while at < len(data) and budget > 0 and time.monotonic() < deadline:
                candidate = data[:at] + data[at + step:]
                if PNG_SIGNATURE in candidate:  # or every cut would fail Pillow's CRC check
                    candidate = fix_png_crcs(candidate)
                budget -= 1
                found = crash(outcome(target, candidate, 1.0))
                if found is not None and signature(found) == crasher.signature:
                    data, shrank = candidate, True
                else:
                    at += step
            if not shrank:
                step //= 2
    return replace(crasher, data=data)


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """libtiff and libjpeg print a line on file descriptor 2 for nearly every broken TIFF:
    thousands a second, which would drown a benchmark's or a failing test's output."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if (not hasattr(signal, "setitimer") or seconds <= 0
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise MutantTimeout(f"decoding took over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
