"""`--engine spark`: a real local Spark decodes and embeds; the results equal the local engine's.

The in-process tests share one local Spark (``local[2]``), started once for the module: the
engine uses a session already running in its process as it is, as it would a notebook's. The CLI
tests start their own, as `lookalike index --engine spark` does. Nothing about Spark is faked.
Without PySpark or Java the tests skip, saying why; under CI (`make test` installs both) they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import TINY, make_variants
from indexer_runs import alive, committed_rows, descendants, same_as_local, stored, wait_committed
from lookalike import Collection
from lookalike.errors import MissingDependencyError, SparkJobError, UsageError
from lookalike.ingest.spark import SparkEngine, engine_for
from lookalike.ingest.spark_session import require_spark, session

pytestmark = pytest.mark.spark


def _skip_without_spark() -> None:
    try:
        require_spark()
    except MissingDependencyError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"The Spark engine cannot run under CI: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    """One local Spark for the module's in-process tests, stopped (with its JVM) after them."""
    _skip_without_spark()
    with session("local[2]") as active:
        yield active


def test_spark_vectors_equal_local_engine(spark: Any, photos: Path, sample_dir: Path,
                                          tmp_path: Path) -> None:
    make_variants(sample_dir, photos / "variants", 12)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "truncated.jpg").write_bytes((photos / "variants" / "img0001.jpg").read_bytes()[:300])
    with Collection.create(tmp_path / "local") as local:
        local_report = local.index([photos], workers=0, batch_size=8, show_progress=False)
        expected = stored(local)
    with Collection.create(tmp_path / "spark") as col:
        report = col.index([photos], engine="spark", batch_size=8, show_progress=False)
        got = stored(col)
        assert report.added == local_report.added == len(got) - 2
        assert report.stage_seconds["spark_start"] > 0  # it did run on Spark
        assert report.stage_seconds["model_load"] > 0  # in the module's fresh Python workers

        # the same files, the same outcome, the same vectors; bad files are failures with
        # their reason, exactly as locally
        reasons = same_as_local(got, expected, report, local_report)
        assert reasons.keys() == {"empty.jpg", "truncated.jpg"}

        # a rerun finds nothing to do, so it never asks Spark for anything
        again = col.index([photos], engine="spark", show_progress=False)
        assert again.added == again.updated == 0 and again.unchanged == len(got)
        assert "spark_start" not in again.stage_seconds

        # a copy reuses the stored vector by content hash
        original = photos / "variants" / "img0003.jpg"
        shutil.copy(original, photos / "copy.jpg")
        copied = col.index([photos], engine=SparkEngine(workers=1), show_progress=False)
        assert (copied.added, copied.reused, copied.unchanged) == (1, 1, len(got))
        assert "model_load" not in copied.stage_seconds  # the workers kept their models
        assert np.array_equal(col.store.vector(col.find(photos / "copy.jpg")),
                              col.store.vector(col.find(original)))
        probe = photos / "variants" / "img0005.jpg"
        assert col.search(probe, k=1)[0].uri == str(probe)
        assert col.verify().ok


def test_a_failing_task_stops_the_run_with_its_reason(spark: Any, sample_dir: Path,
                                                      tmp_path: Path) -> None:
    # The test model is registered in this process only: Spark's workers do not know it.
    with Collection.create(tmp_path / "col", model=TINY) as col:
        with pytest.raises(SparkJobError, match=r"Unknown model 'test-tiny'.*a rerun carries on"):
            col.index([sample_dir], engine="spark", show_progress=False)
        assert col.info().images == 0


def test_a_session_on_another_master_is_refused(spark: Any) -> None:
    with pytest.raises(UsageError, match=r"already runs a Spark session \(master local\[2\]\)"), \
            session("spark://elsewhere:7077"):
        pass


def test_engine_options_are_checked(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="choose local, ray or spark"):
        engine_for("sprak", None, None)
    with pytest.raises(UsageError, match="batches embedded at once"):
        engine_for("spark", None, 0)
    with pytest.raises(UsageError, match="at least 1"):
        SparkEngine(workers=0)
    assert engine_for(SparkEngine(workers=3), "local[2]", None) == \
        SparkEngine(master="local[2]", workers=3)
    with Collection.create(tmp_path / "col") as col:
        with pytest.raises(UsageError, match=r"needs engine='spark' \(--engine spark\)"):
            col.index([photos], spark_master="local[2]")
        with pytest.raises(UsageError, match=r"needs engine='ray'"):
            col.index([photos], engine="spark", ray_address="auto")
        with pytest.raises(UsageError, match="choose local, ray or spark"):
            col.index([photos], engine="sprak")


def test_missing_pyspark_or_java_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[spark\]'"):
        engine_for("spark", None, None)
    monkeypatch.delitem(sys.modules, "pyspark")
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `java` on it
    with pytest.raises(MissingDependencyError, match=r"No Java runtime.*openjdk-17-jre-headless"):
        engine_for("spark", None, None)
    monkeypatch.undo()  # java on PATH again, but JAVA_HOME (which Spark prefers) names nothing
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(MissingDependencyError, match=r"JAVA_HOME=.*nowhere has no bin/java"):
        engine_for("spark", None, None)


# -- the real CLI ---------------------------------------------------------------------------------


def _lookalike(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "lookalike", *map(str, args)]


def test_cli_spark_master_needs_the_spark_engine(photos: Path, tmp_path: Path) -> None:
    done = subprocess.run(_lookalike("index", photos, "-c", tmp_path / "col", "--spark-master",
                                     "local[2]"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--spark-master) needs engine='spark' (--engine spark)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "col").exists()  # refused before a collection was made for it
    done = subprocess.run(_lookalike("index", photos, "-c", tmp_path / "col", "--engine", "spark",
                                     "--workers", "0"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "at least 1, got 0" in done.stderr, done.stderr
    assert not (tmp_path / "col").exists()


def _all_gone(pids: set[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(map(alive, pids))


def _index_command(photos: Path, col_dir: Path) -> list[str]:
    return _lookalike("index", photos, "-c", col_dir, "--engine", "spark", "--batch-size", "4",
                      "--workers", "2", "--json")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cli_killed_mid_run_then_resumed(spark: Any, sample_dir: Path, tmp_path: Path) -> None:
    photos, col_dir = tmp_path / "photos", tmp_path / "col"
    n_images = 240
    make_variants(sample_dir, photos, n_images)
    db = col_dir / "lookalike.db"

    # kill -9 once the first batches are committed: the local Spark it started goes with it
    writer = subprocess.Popen(_index_command(photos, col_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_committed(db, 8, writer)
    spark_processes = descendants(writer.pid)  # the JVM, Spark's Python daemon and workers
    assert spark_processes, "no Spark processes under the indexer"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    killed_at = len(committed_rows(db))
    assert 8 <= killed_at < n_images

    # the rerun (here, on the module's Spark) does the rest, once
    with Collection.open(col_dir) as col:
        report = col.index([photos], engine="spark", batch_size=4, show_progress=False)
        assert (report.unchanged, report.added, report.failed) == \
            (killed_at, n_images - killed_at, ())
        rows = committed_rows(db)
        assert len(rows) == len({uri for uri, _, _ in rows}) == n_images
        assert {status for _, _, status in rows} == {"active"}
        assert col.verify().ok
        ids = col.live.live_ids()
        assert len(ids) == len(set(ids.tolist())) == n_images
    # Spark's processes die with the driver: the JVM when its stdin closes, its Python daemon
    # and workers when the JVM goes.
    assert _all_gone(spark_processes, 30), "Spark processes outlived a killed indexer"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cli_interrupted_then_resumed(sample_dir: Path, tmp_path: Path) -> None:
    _skip_without_spark()
    photos, col_dir = tmp_path / "photos", tmp_path / "col"
    n_images = 160
    make_variants(sample_dir, photos, n_images)
    db = col_dir / "lookalike.db"

    # Ctrl-C: a clean stop with the usual message, finished batches kept, Spark stopped
    writer = subprocess.Popen(  # a shell may start children with SIGINT ignored: restore it
        _index_command(photos, col_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_committed(db, 8, writer)
    spark_processes = descendants(writer.pid)
    writer.send_signal(signal.SIGINT)
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    assert _all_gone(spark_processes, 15), "Ctrl-C left Spark processes behind"
    stopped_at = len(committed_rows(db))
    assert 8 <= stopped_at < n_images

    # the rerun, through the CLI too, does the rest, once
    done = subprocess.run(_index_command(photos, col_dir), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["unchanged"] == stopped_at and report["added"] == n_images - stopped_at
    assert report["failed"] == [] and report["stage_seconds"]["spark_start"] > 0
    verify = subprocess.run(_lookalike("verify", "-c", col_dir), capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
