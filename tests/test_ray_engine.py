"""`--engine ray`: a real local Ray decodes and embeds; the results equal the local engine's.

Each test starts its own local Ray (2 CPUs), as `lookalike index --engine ray` does without
`--ray-address`; nothing about Ray is faked.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_variants
from indexer_runs import alive, committed_rows, descendants, same_as_local, stored, wait_committed
from lookalike import Collection
from lookalike.errors import MissingDependencyError, UsageError

pytestmark = pytest.mark.ray

pytest.importorskip("ray.data", reason="the Ray engine needs the `ray` extra")

from lookalike.ingest.ray import RayEngine, engine_for  # noqa: E402

ENGINE = RayEngine(num_cpus=2)


def _bad_files(folder: Path) -> dict[str, str]:
    """Files that cannot be indexed, and a word their failure reason must contain."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image at all")
    good = next(p for p in sorted(folder.glob("*.jpg")) if p.stat().st_size)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    return {"empty.jpg": "empty", "notes.png": "not an image", "truncated.jpg": "corrupt"}


def test_ray_vectors_equal_local_engine(photos: Path, sample_dir: Path, tmp_path: Path) -> None:
    make_variants(sample_dir, photos / "variants", 24)
    bad = _bad_files(photos)
    with Collection.create(tmp_path / "local") as local:
        local_report = local.index([photos], workers=0, batch_size=8, show_progress=False)
        expected = stored(local)
    with Collection.create(tmp_path / "ray") as col:
        report = col.index([photos], engine=ENGINE, batch_size=8, show_progress=False)
        got = stored(col)
        assert report.added == local_report.added and report.added + len(bad) == len(got)
        assert report.stage_seconds["ray_start"] > 0  # it did run on Ray

        # the same files, the same outcome, the same vectors; bad files are failures with
        # their reason, exactly as locally
        reasons = same_as_local(got, expected, report, local_report)
        for name, word in bad.items():
            assert word in reasons[name].lower(), reasons[name]

        # a rerun finds nothing to do, so it never starts Ray
        again = col.index([photos], engine=ENGINE, show_progress=False)
        assert again.added == again.updated == 0 and again.unchanged == len(got)
        assert "ray_start" not in again.stage_seconds

        # a copy reuses the stored vector by content hash
        original = photos / "variants" / "img0003.jpg"
        shutil.copy(original, photos / "copy.jpg")
        copied = col.index([photos], engine=ENGINE, show_progress=False)
        assert (copied.added, copied.reused, copied.unchanged) == (1, 1, len(got))
        assert np.array_equal(col.store.vector(col.find(photos / "copy.jpg")),
                              col.store.vector(col.find(original)))

        # the index searches what the store holds
        probe = photos / "variants" / "img0005.jpg"
        assert col.search(probe, k=1)[0].uri == str(probe)
        assert col.verify().ok


def test_engine_options_are_checked() -> None:
    with pytest.raises(UsageError, match="choose local or ray"):
        engine_for("rya", None, None)
    with pytest.raises(UsageError, match="embedding actors"):
        engine_for("ray", None, 0)
    with pytest.raises(UsageError, match="at least 1"):
        RayEngine(cpus_per_actor=0)
    assert engine_for(RayEngine(actors=3), "auto", None) == RayEngine(address="auto", actors=3)


def test_ray_address_needs_the_ray_engine(photos: Path, tmp_path: Path) -> None:
    with Collection.create(tmp_path / "col") as col, pytest.raises(UsageError, match="--engine"):
        col.index([photos], ray_address="auto")


class _SlowRay:
    """Stands in for a Ray whose raylet misses its start-up deadline ``failures`` times (not
    something a test can make a real Ray do on purpose)."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.shutdowns = failures, 0, 0

    def init(self, **options: object) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise Exception("The current node timed out during startup. This could happen ...")

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_local_ray_that_starts_slowly_is_started_again_once() -> None:
    from lookalike.ingest.ray import _init

    once = _SlowRay(failures=1)
    _init(once, {"address": "local"}, None)
    assert (once.calls, once.shutdowns) == (2, 1)
    never = _SlowRay(failures=5)
    with pytest.raises(UsageError, match=r"local Ray \(2 tries\).*--engine local"):
        _init(never, {"address": "local"}, None)
    assert (never.calls, never.shutdowns) == (2, 2)
    remote = _SlowRay(failures=1)  # a cluster given by address is not restarted: reported as is
    with pytest.raises(Exception, match="timed out during startup"):
        _init(remote, {"address": "ray://head:10001"}, "ray://head:10001")
    assert remote.calls == 1


def test_missing_ray_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[ray\]'"):
        engine_for("ray", None, None)


@pytest.mark.slow
def test_gpus_the_model_cannot_use_fall_back_to_cpus(sample_dir: Path, tmp_path: Path) -> None:
    import ray

    photos = sample_dir  # read-only use
    with Collection.create(tmp_path / "local") as local:
        local.index([photos], workers=0, show_progress=False)
        expected = stored(local)
    # A cluster that says it has a GPU, in a process where Ray already runs: the engine uses that
    # cluster (and leaves it running), finds that the model cannot load on CUDA, and uses CPUs.
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
             log_to_driver=False)
    try:
        with Collection.create(tmp_path / "ray") as col, \
                pytest.warns(RuntimeWarning, match="cannot run on them"):
            report = col.index([photos], engine="ray", show_progress=False)
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    assert report.added == len(expected) and not report.failed
    with Collection.open(tmp_path / "ray") as col:
        got = stored(col)
    for uri, (_, vector) in expected.items():
        assert float(np.abs(vector - got[uri][1]).max()) <= 1e-5, uri


# -- the real CLI, killed and interrupted mid-run, then resumed -----------------------------------


def _all_gone(pids: set[int], deadline: float) -> bool:
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(map(alive, pids))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cli_killed_then_interrupted_then_resumed(sample_dir: Path, tmp_path: Path) -> None:
    photos, col_dir = tmp_path / "photos", tmp_path / "col"
    n_images = 240
    make_variants(sample_dir, photos, n_images)
    command = [sys.executable, "-m", "lookalike", "index", str(photos), "-c", str(col_dir),
               "--engine", "ray", "--batch-size", "4", "--json"]
    db = col_dir / "lookalike.db"

    # kill -9 after the first committed batch: the local Ray it started goes with it
    writer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_committed(db, 4, writer)
    ray_processes = descendants(writer.pid)
    assert ray_processes, "no Ray processes under the indexer"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    killed = time.monotonic()
    killed_at = len(committed_rows(db))
    assert 4 <= killed_at < n_images

    # Ctrl-C: a clean stop with the usual message, finished batches kept
    writer = subprocess.Popen(  # a shell may start children with SIGINT ignored: restore it
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_committed(db, killed_at + 4, writer)
    writer.send_signal(signal.SIGINT)
    ray_processes_2 = descendants(writer.pid)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    assert _all_gone(ray_processes_2, time.monotonic() + 15), "Ctrl-C left Ray processes behind"
    stopped_at = len(committed_rows(db))

    # the rerun does the rest, once
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["unchanged"] == stopped_at and report["added"] == n_images - stopped_at
    assert report["failed"] == []
    rows = committed_rows(db)
    assert len(rows) == len({uri for uri, _, _ in rows}) == n_images
    assert {status for _, _, status in rows} == {"active"}
    verify = subprocess.run([sys.executable, "-m", "lookalike", "verify", "-c", str(col_dir)],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    with Collection.open(col_dir) as col:
        ids = col.live.live_ids()
        assert len(ids) == len(set(ids.tolist())) == n_images

    # The processes of the killed run's Ray (raylet, GCS...) died with it; its workers and
    # agents notice that their raylet is gone and exit within a minute or so (Ray's timeouts).
    assert _all_gone(ray_processes, killed + 180), "Ray processes outlived a killed indexer"
