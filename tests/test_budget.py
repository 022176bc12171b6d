"""The decode memory budget: shared by threads and by processes, never leaked by a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lookalike.budget import DecodeBudget
from lookalike.errors import BusyError, DecodeError, UsageError

MIB = 1024 * 1024
HOLDER = """
import sys, time
from lookalike.budget import DecodeBudget
budget = DecodeBudget(64 * 2**20, folder=sys.argv[1], slot_bytes=2**20)
with budget.reserve(int(sys.argv[2]) * 2**20):
    print("held", flush=True)
    time.sleep(600)
"""


def budget(folder: Path, wait: float = 5.0) -> DecodeBudget:
    return DecodeBudget(64 * MIB, folder=folder, slot_bytes=MIB, wait=wait)


def test_reservations_share_the_budget_between_threads(tmp_path: Path) -> None:
    shared = budget(tmp_path)
    events: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with shared.reserve(40 * MIB):
            first_in.set()
            time.sleep(0.4)
            events.append("first out")

    worker = threading.Thread(target=first)
    worker.start()
    first_in.wait(5)
    with shared.reserve(20 * MIB):  # fits beside it: no wait
        events.append("small in")
    with shared.reserve(40 * MIB):  # does not fit until the first is done
        events.append("second in")
    worker.join()
    assert events == ["small in", "first out", "second in"]


def test_a_reservation_that_can_never_fit_is_refused_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DecodeError, match="more than the whole decode memory budget") as info:
        with budget(tmp_path).reserve(65 * MIB):
            pass
    assert info.value.reason == "too_many_pixels" and time.monotonic() - started < 1


def test_another_process_holds_budget_and_its_death_frees_it(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        impatient = budget(tmp_path, wait=0.3)
        with impatient.reserve(4 * MIB):  # room for 4 of 64 MiB
            pass
        started = time.monotonic()
        with pytest.raises(BusyError, match="retry shortly") as info:
            with impatient.reserve(5 * MIB):
                pass
        assert 0.3 <= time.monotonic() - started < 2 and info.value.retry_after >= 1
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        with impatient.reserve(64 * MIB):  # the kernel let go of the dead holder's locks
            pass
    finally:
        holder.kill()
        holder.wait(10)


def test_a_folder_of_someone_else_or_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="not a folder of this user's"):
        budget(tmp_path / "link")
    with pytest.raises(UsageError, match="at least"):
        DecodeBudget(MIB, folder=tmp_path)
