"""The real `lookalike` command in a subprocess: output, exit codes, error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "lookalike", *map(str, args)],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def indexed(sample_dir: Path, edited: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    col = tmp_path_factory.mktemp("cli") / "col"
    report = json.loads(run("index", sample_dir, "--collection", col, "--json").stdout)
    assert report["added"] == len(list(sample_dir.glob("*.jpg"))) and report["failed"] == []
    return col


def test_search_finds_the_original_of_edited_copies(
    indexed: Path, edited: list[tuple[str, Path, Path]]
) -> None:
    for edit, original, copy in edited:
        if edit != "text":
            continue
        out = json.loads(run("search", copy, "-c", indexed, "-k", "3", "--json").stdout)
        assert out["results"][0]["uri"] == str(original)
        assert [r["rank"] for r in out["results"]] == [1, 2, 3]
    text = run("search", edited[0][2], "-c", indexed, "-k", "2").stdout.splitlines()
    assert len(text) == 2 and text[0].split()[0] == "1" and text[0].endswith(str(edited[0][1]))


def test_search_by_indexed_path_and_by_id(indexed: Path, sample_dir: Path) -> None:
    by_path = json.loads(run("search", sample_dir / "moon.jpg", "-c", indexed, "--json").stdout)
    assert str(sample_dir / "moon.jpg") not in {r["uri"] for r in by_path["results"]}
    first = by_path["results"][0]["image_id"]
    by_id = json.loads(run("search", "--id", first, "-c", indexed, "--json", "-k", "3").stdout)
    assert first not in {r["image_id"] for r in by_id["results"]}
    assert by_id["results"] == json.loads(
        run("search", str(first), "-c", indexed, "--json", "-k", "3").stdout)["results"]
    sliced = run("search", sample_dir / "moon.jpg", "-c", indexed, "--where",
                 'name like "c*" or format != jpeg', "--max-per", "folder=2").stdout.splitlines()
    assert len(sliced) == 2 and all(line.split()[1] in ("exact", "copy", "similar", "-")
                                    and Path(line.split()[-1]).name.startswith("c")
                                    for line in sliced)


def test_info_and_models(indexed: Path, sample_dir: Path) -> None:
    info = json.loads(run("info", "-c", indexed, "--json").stdout)
    assert info["model"] == "efficientnet-lite0-gem" and info["dim"] == 1280
    assert info["images"] == len(list(sample_dir.glob("*.jpg"))) and info["failed"] == 0
    assert info["bytes_on_disk"]["main.index"] > 0
    assert "collection" in run("info", "-c", indexed).stdout
    assert "resnet50" in run("models").stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["index", "{photos}", "-c", "{new}", "--model", "resnet"], 2, "Did you mean 'resnet50'"),
        (["index", "{photos}", "-c", "{col}", "--model", "efficientnet-lite1"], 2,
         "built with model 'efficientnet-lite0-gem'"),
        (["search", "{photo}", "-c", "{new}"], 2, "No collection at"),
        (["index", "{new}/does-not-exist", "-c", "{col}"], 2, "does not exist"),
        (["search", "-c", "{col}"], 2, "Give either IMAGE or --id"),
        (["search", "nonsense.jpg", "-c", "{col}"], 2, "neither an existing file nor an image id"),
        (["search", "--id", "99999", "-c", "{col}"], 2, "No indexed image has id 99999"),
        (["search", "--id", "99999999999999999999999", "-c", "{col}"], 2,
         "No indexed image has id 99999999999999999999999"),
        (["search", "9223372036854775808", "-c", "{col}"], 2,
         "No indexed image has id 9223372036854775808"),
        (["remove", "99999999999999999999999", "-c", "{col}"], 2,
         "No indexed image has id 99999999999999999999999"),
        (["search", "{photo}", "-c", "{col}", "-k", "0"], 2, "Invalid value for '-k'"),
        (["search", "{photo}", "-c", "{col}", "--where", "album ="], 2,
         "Bad filter expression: expected a value"),
        (["search", "{photo}", "-c", "{col}", "--max-per", "album"], 2, "max_per takes KEY=N"),
        (["index", "{photos}", "--index", "IVF1024", "-c", "{new}"], 2, "Unknown index spec"),
        (["frobnicate"], 2, "No such command"),
        (["search", "{notimage}", "-c", "{col}"], 1, "not an image"),
    ],
)
def test_errors_are_one_clear_line(
    args: list[str], code: int, message: str, indexed: Path, sample_dir: Path, tmp_path: Path
) -> None:
    notimage = tmp_path / "notes.jpg"
    notimage.write_text("hello")
    values = {"photos": sample_dir, "photo": sample_dir / "moon.jpg", "col": indexed,
              "new": tmp_path / "new", "notimage": notimage}
    result = run(*[a.format(**values) for a in args], check=False)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run("--debug", "info", "-c", tmp_path / "missing", check=False)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "CollectionNotFoundError" in result.stderr


def test_second_writer_exits_1_with_locked_message(indexed: Path, sample_dir: Path) -> None:
    from filelock import FileLock

    with FileLock(str(indexed / ".lock")):
        started = time.monotonic()
        result = run("index", sample_dir, "-c", indexed, "--wait", "0.5", check=False)
    assert result.returncode == 1 and "being written by another process" in result.stderr
    assert time.monotonic() - started >= 0.5  # it waited for the other writer first
