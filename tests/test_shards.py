"""Sharded backfill: `lookalike embed --shard I/N` writes one Parquet file per shard, `lookalike
import` loads them into a collection.

The congruence test and the kill test run the real command in subprocesses (which know only the
real models: the default one, as `lookalike index` uses it); the others call the library or the
CLI in this process with the fast ``test-tiny`` model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

import cloud
from conftest import TINY, make_variants
from lookalike import Collection
from lookalike.cli import main
from lookalike.embedders import Embedder
from lookalike.errors import ModelMismatchError, UsageError
from lookalike.ingest.shards import Shard, embed_shard, shard_of
from lookalike.settings import DEFAULT_MODEL

BAD = {"empty.jpg": b"", "notes.png": b"not an image at all"}


def lookalike(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lookalike", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    return json.loads(out)


def photo_folder(sample_dir: Path, folder: Path, n: int) -> Path:
    """``n`` small distinct photos, the sample photos and two files that are not images."""
    make_variants(sample_dir, folder / "variants", n)
    shutil.copytree(sample_dir, folder / "samples")
    good = (folder / "samples").glob("*.jpg")
    (folder / "truncated.jpg").write_bytes(next(good).read_bytes()[:300])
    for name, data in BAD.items():
        (folder / name).write_bytes(data)
    return folder


def stored(col: Collection) -> dict[str, tuple[tuple[Any, ...], np.ndarray | None]]:
    """uri -> (the row's facts, its vector) of every live image."""
    return {uri: ((r.size, r.mtime_ns, r.etag, r.content_hash, r.width, r.height, r.status,
                   r.error), col.store.vector(r.id))
            for uri, r in col.store.file_states().items()}


def assert_same(got: Collection, expected: Collection) -> None:
    """The same images with the same facts and outcome, and the same vectors."""
    mine, theirs = stored(got), stored(expected)
    assert mine.keys() == theirs.keys()
    for uri, (facts, vector) in theirs.items():
        assert mine[uri][0] == facts, uri
        other = mine[uri][1]
        if vector is None:
            assert other is None, uri
            continue
        assert other is not None, uri
        assert float(np.abs(vector - other).max()) <= 1e-6, uri


def shard_uris(path: Path | str) -> list[str]:
    return pq.read_table(path, columns=["uri"]).column("uri").to_pylist()


@pytest.fixture(scope="module")
def default_model() -> None:
    """The default model's graph exported once, before subprocesses race to export it."""
    Embedder.load(DEFAULT_MODEL)


def test_four_shard_processes_and_an_import_equal_lookalike_index(
    default_model: None, sample_dir: Path, tmp_path: Path
) -> None:
    photos = photo_folder(sample_dir, tmp_path / "photos", 24)
    shards, local, imported = tmp_path / "shards", tmp_path / "local", tmp_path / "imported"
    jobs = [lookalike("embed", photos, "--shard", f"{i}/4", "--out", shards, "--workers", "1",
                      "--batch-size", "4", "--threads", "1", "--json") for i in range(4)]
    index = lookalike("index", photos, "-c", local, "--workers", "1", "--threads", "1", "--json")
    reports = [finished(job) for job in jobs]
    local_report = finished(index)

    listed = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    assert {r["listed"] for r in reports} == {len(listed)}
    assert sum(r["images"] for r in reports) == len(listed)
    assert sorted(os.listdir(shards)) == [f"part-0000{i}-of-00004.parquet" for i in range(4)]
    for i, report in enumerate(reports):  # each shard holds exactly the files that hash to it
        assert report["out"] == str(shards / Shard(i, 4).file_name)
        assert shard_uris(report["out"]) == [u for u in listed if shard_of(u, 4) == i]
    meta = pq.read_schema(shards / Shard(2, 4).file_name).metadata
    assert meta[b"lookalike.shard"] == b"2/4" and meta[b"lookalike.model"] == DEFAULT_MODEL.encode()

    report = finished(lookalike("import", shards, "-c", imported, "--json"))
    assert (report["added"], report["shard_files"]) == (local_report["added"], 4)
    failures = sorted(report["failed"], key=lambda f: f["uri"])
    assert failures == sorted(local_report["failed"], key=lambda f: f["uri"])
    assert [f["uri"] for f in failures] == [str(photos / n) for n in (*BAD, "truncated.jpg")]
    with Collection.open(local) as expected, Collection.open(imported) as got:
        assert got.manifest.model == expected.manifest.model  # made with the shards' model
        assert_same(got, expected)
        assert got.verify().problems == ()  # the vector index is in step with the store
        probe = str(photos / "variants" / "img0007.jpg")
        assert got.search(probe, k=1)[0].uri == probe


def test_importing_a_shard_twice_adds_nothing_and_an_import_carries_on(
    tiny_embedder: Embedder, sample_dir: Path, tmp_path: Path
) -> None:
    photos = photo_folder(sample_dir, tmp_path / "photos", 12)
    out = tmp_path / "shards"
    first, second = (embed_shard([photos], Shard(i, 2), str(out), tiny_embedder, workers=0)
                     for i in range(2))
    with Collection.create(tmp_path / "col", model=TINY) as col:
        once = col.import_shards([first.out])
        assert once.added + len(once.failed) == first.images
        rows, ids = col.store.counts(), col.live.live_ids()
        again = col.import_shards([first.out])
        assert (again.added, again.updated, again.unchanged) == (0, 0, first.images)
        assert col.store.counts() == rows and np.array_equal(col.live.live_ids(), ids)

        # The whole folder after one shard: only the other one's images are new.
        rest = col.import_shards([out])
        assert (rest.unchanged, rest.added + len(rest.failed)) == (first.images, second.images)
        with Collection.create(tmp_path / "local", model=TINY) as local:
            local.index([photos], workers=0)
            assert_same(col, local)


def test_a_killed_shard_leaves_no_shard_file_and_is_redone(
    default_model: None, sample_dir: Path, tmp_path: Path
) -> None:
    photos, out = tmp_path / "photos", tmp_path / "shards"
    make_variants(sample_dir, photos, 240)
    command = ["embed", photos, "--shard", "1/2", "--out", out, "--batch-size", "2",
               "--workers", "1", "--threads", "1", "--progress"]
    shard = lookalike(*command)
    assert shard.stderr is not None
    progress: list[int] = []

    def read() -> None:  # tqdm redraws "embedding 1/2:  10%|...| 12/118 [...]" after \r
        assert shard.stderr is not None
        text = ""
        while chunk := shard.stderr.read(1):
            text = text[-200:] + chunk
            progress.extend(int(done) for done in re.findall(r"\| (\d+)/\d+ \[", text[-40:]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while max(progress, default=0) < 20 and time.monotonic() < deadline:
        assert shard.poll() is None, "the shard finished before it could be killed"
        time.sleep(0.01)
    shard.send_signal(signal.SIGKILL)
    shard.wait()
    reader.join(10)
    assert 20 <= max(progress) < 100
    assert [p for p in os.listdir(out) if not p.startswith(".")] == []  # only a hidden .tmp
    assert lookalike("import", out, "-c", tmp_path / "col").wait(60) == 2  # nothing to import

    report = finished(lookalike(*command[:-1], "--json"))
    assert os.listdir(out) == ["part-00001-of-00002.parquet"]  # the temporary file is gone
    mine = sorted(str(p) for p in photos.iterdir() if shard_of(str(p), 2) == 1)
    assert report["images"] == len(mine) and shard_uris(report["out"]) == mine


@pytest.mark.parametrize(("variable", "value", "index"), [
    ("AWS_BATCH_JOB_ARRAY_INDEX", "1", 1), ("JOB_COMPLETION_INDEX", "2", 2),
    ("SLURM_ARRAY_TASK_ID", "1", 0),  # --array=1-3: SLURM_ARRAY_TASK_MIN=1
])
def test_the_shard_index_comes_from_the_array_job(
    variable: str, value: str, index: int, sample_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    out = tmp_path / "shards"
    main(["embed", str(sample_dir), "--shards", "3", "--out", str(out), "--model", TINY,
          "--workers", "0"])
    assert f"Embedded shard {index}/3" in capsys.readouterr().out
    listed = sorted(str(p) for p in sample_dir.iterdir())
    assert shard_uris(out / Shard(index, 3).file_name) == [
        u for u in listed if shard_of(u, 3) == index]


@pytest.mark.parametrize(("args", "message"), [
    ([], "Which shard? Give --shard I/N, or --shards N in an array job"),
    (["--shards", "3"], "Which shard?"),
    (["--shard", "3/3"], "Shard 3/3 does not exist (shards count from 0)"),
    (["--shard", "one/3"], "--shard takes INDEX/COUNT"),
    (["--shard", "0/0"], "the number of shards must be at least 1"),
])
def test_without_a_shard_index_embed_is_a_usage_error(
    args: list[str], message: str, tmp_path: Path, sample_dir: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["embed", str(sample_dir), "--out", str(tmp_path), "--model", TINY, *args])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_an_array_index_past_the_shards_names_its_variable(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "7")
    with pytest.raises(SystemExit) as exited:
        main(["embed", str(sample_dir), "--shards", "4", "--out", str(tmp_path), "--model", TINY])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "AWS_BATCH_JOB_ARRAY_INDEX=7 gives shard 7" in err, err


def test_a_shard_of_another_model_is_refused(
    tiny_embedder: Embedder, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = embed_shard([sample_dir], Shard(0, 2), str(tmp_path / "shards"), tiny_embedder,
                         workers=0)
    with Collection.create(tmp_path / "col", model="efficientnet-lite0") as col:
        with pytest.raises(ModelMismatchError) as refused:
            col.import_shards([report.out])
        assert "test-tiny:rff-seed0:graph2" in str(refused.value)  # the shard's fingerprint
        assert col.manifest.model.fingerprint in str(refused.value)  # the collection's
        assert col.store.counts()["active"] == 0
    with pytest.raises(SystemExit) as exited:
        main(["import", report.out, "-c", str(tmp_path / "col")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "was embedded with test-tiny" in err
    assert "warning" not in err  # refused first: shard 1/2 missing is beside the point


def test_an_import_of_some_shards_warns_about_the_others(
    tiny_embedder: Embedder, sample_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    report = embed_shard([sample_dir], Shard(1, 3), str(out), tiny_embedder, workers=0)
    main(["import", str(out), "-c", str(tmp_path / "col")])
    printed = capsys.readouterr()
    assert "2 of 3 shards are not among the files (shard 0, 2 of 3)" in printed.err
    assert f"Imported {report.images} images from 1 shard files" in printed.out
    main(["import", str(out), "-c", str(tmp_path / "col"), "--json"])  # for a pipeline to see
    assert json.loads(capsys.readouterr().out)["missing_shards"] == {"3": [0, 2]}


@pytest.fixture
def bucket(moto: cloud.MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    yield moto.bucket(), moto.client("s3")


def test_shards_round_trip_through_s3(
    bucket: tuple[str, Any], tiny_embedder: Embedder, sample_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    name, s3 = bucket
    for path in make_variants(sample_dir, tmp_path / "variants", 10):
        s3.put_object(Bucket=name, Key=f"photos/{path.name}", Body=path.read_bytes())
    s3.put_object(Bucket=name, Key="photos/broken.jpg", Body=b"\xff\xd8 not really a jpeg")
    for i in range(2):
        embed_shard([f"s3://{name}/photos/"], Shard(i, 2), f"s3://{name}/shards", tiny_embedder,
                    workers=0)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=name, Prefix="shards/")["Contents"]]
    assert keys == ["shards/part-00000-of-00002.parquet", "shards/part-00001-of-00002.parquet"]

    main(["import", f"s3://{name}/shards/", "-c", str(tmp_path / "imported")])
    assert "Imported 10 images from 2 shard files" in capsys.readouterr().out
    with Collection.open(tmp_path / "imported") as got, \
            Collection.create(tmp_path / "local", model=TINY) as local:
        assert got.model_name == TINY  # the new collection got the shards' model
        local.index([f"s3://{name}/photos/"], workers=0)
        assert_same(got, local)
        assert got.store.file_states()[f"s3://{name}/photos/img0003.jpg"].etag


def _rewritten(path: str, target: Path, change: Any) -> Path:
    """A copy of the shard file at ``path`` whose table went through ``change`` (a valid Parquet
    file, checksums and lookalike metadata kept: only its contents are wrong)."""
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), target,
                   write_page_checksum=True)
    return target


@pytest.mark.parametrize("damage", ["flipped bytes", "a vector not of length 1"])
def test_a_damaged_shard_is_refused_and_never_reaches_search(
    tiny_embedder: Embedder, sample_dir: Path, tmp_path: Path, damage: str
) -> None:
    import pyarrow as pa

    report = embed_shard([sample_dir], Shard(0, 1), str(tmp_path / "shards"), tiny_embedder,
                         workers=0)
    bad = tmp_path / "bad" / Path(report.out).name
    bad.parent.mkdir()
    if damage == "flipped bytes":  # in the pages of vectors: the page checksums catch it
        data = bytearray(Path(report.out).read_bytes())
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF
        bad.write_bytes(bytes(data))
    else:  # well-formed Parquet, but one vector 1e3 times too long
        def scaled(table: Any) -> Any:
            vectors = table.column("vector").to_pylist()
            vectors[0] = [x * 1e3 for x in vectors[0]]
            column = pa.array(vectors, table.schema.field("vector").type)
            return table.set_column(table.schema.get_field_index("vector"), "vector", column)
        _rewritten(report.out, bad, scaled)
    with Collection.create(tmp_path / "col", model=TINY) as col:
        with pytest.raises(UsageError, match="is damaged.*embed the shard again"):
            col.import_shards([bad])
        assert col.store.counts()["active"] == 0
        col.import_shards([report.out])  # the good file: every photo finds itself
        photo = sorted(sample_dir.glob("*.jpg"))[0]
        assert col.search(photo, k=1)[0].uri == str(photo)


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs (no one creates files)")
def test_an_out_folder_that_cannot_be_written_is_a_usage_error(
    sample_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["embed", str(sample_dir), "--shard", "0/1", "--out", "/sys/kernel", "--model", TINY])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Give an --out folder" in err and "free" not in err, err
