"""A memory budget for decoding images, shared by the threads of a process and by processes.

Decoding takes memory in proportion to an image's pixels, whatever the size of its file: a 37 KB
PNG can take 350 MB. A server decodes many uploads at once, in several worker processes, so each
decode first reserves what it costs (:func:`lookalike.imaging.decode_cost`) here.

The budget is cut into slots of equal size, one lock file each, locked with ``flock(2)``: a
reservation holds as many slots as its cost needs, whichever are free. A ``flock`` lock belongs to
one open file, so two threads of a process exclude each other as two processes do, and the kernel
lets go of a dead process's locks: a crash never leaks budget. A reservation that cannot get its
slots retries until its wait is over, then raises :class:`BusyError`; one larger than the whole
budget is refused at once (:class:`DecodeError`, ``too_many_pixels``).
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BusyError, DecodeError, UsageError

SLOT_BYTES = 8 * 1024 * 1024
_MIB = 1024 * 1024


def default_folder() -> Path:
    """The folder every lookalike process of this user on this machine shares its budget in."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "lookalike-decode"
    return Path(tempfile.gettempdir()) / f"lookalike-decode-{os.getuid()}"


class DecodeBudget:
    """``total_bytes`` of decoding at once, across every process that uses ``folder``."""

    def __init__(self, total_bytes: int, *, wait: float = 10.0, folder: str | Path | None = None,
                 slot_bytes: int = SLOT_BYTES) -> None:
        if total_bytes < slot_bytes:
            raise UsageError(f"The decode memory budget must be at least {slot_bytes:,} bytes, "
                             f"got {total_bytes:,}; set decode_memory_bytes higher.")
        self.total_bytes, self.wait, self.slot_bytes = total_bytes, wait, slot_bytes
        self.slots = total_bytes // slot_bytes
        self.folder = Path(folder) if folder is not None else default_folder()
        _private_folder(self.folder)

    def __repr__(self) -> str:
        return f"DecodeBudget({self.total_bytes // _MIB} MiB in {self.folder})"

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes of the budget while the ``with`` block runs."""
        need = max(1, math.ceil(cost / self.slot_bytes))
        if need > self.slots:
            raise DecodeError(
                f"decoding it needs about {cost / _MIB:,.0f} MiB, more than the whole decode "
                f"memory budget of {self.total_bytes / _MIB:,.0f} MiB; send a smaller image, or "
                "raise LOOKALIKE_DECODE_MEMORY_BYTES", "too_many_pixels")
        held = self._take(need)
        try:
            yield
        finally:
            for fd in held:
                os.close(fd)  # closing the file lets go of its lock

    def _take(self, need: int) -> list[int]:
        deadline = time.monotonic() + self.wait
        pause = 0.005
        while True:
            held = self._try_take(need)
            if held:
                return held
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusyError(
                    f"Too many images are being decoded at once (decode memory budget "
                    f"{self.total_bytes / _MIB:,.0f} MiB, waited {self.wait:g} s); retry "
                    "shortly.", retry_after=max(1, math.ceil(self.wait / 4)))
            time.sleep(min(left, pause * random.uniform(0.5, 1.5)))
            pause = min(pause * 2, 0.1)

    def _try_take(self, need: int) -> list[int]:
        """``need`` slots locked now, or none; tries them from a random start, so that waiters
        do not all queue on the first."""
        start = random.randrange(self.slots)
        held: list[int] = []
        for n in range(self.slots):
            fd = os.open(self.folder / f"slot-{(start + n) % self.slots:04d}",
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append(fd)
            if len(held) == need:
                return held
        for fd in held:
            os.close(fd)
        return []


def _private_folder(folder: Path) -> None:
    """Make ``folder`` for this user alone, refusing one someone else owns or a symlink (in a
    shared temporary folder, another user could have made it first)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise UsageError(f"Cannot make the decode budget's folder {folder}: {exc.strerror}; set "
                         "XDG_RUNTIME_DIR to a folder of yours.") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UsageError(f"{folder} is not a folder of this user's: the decode budget will not "
                         "use it. Remove it, or set XDG_RUNTIME_DIR to a folder of yours.")
