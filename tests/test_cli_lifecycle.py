"""add, remove, compact, verify and rebuild through the real command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import make_variants
from test_cli import run


def test_add_remove_compact_verify_rebuild(sample_dir: Path, tmp_path: Path) -> None:
    col = tmp_path / "col"
    run("index", sample_dir, "-c", col, "--index", "Flat")
    new = make_variants(sample_dir, tmp_path / "new", 2)
    added = json.loads(run("add", *new, "-c", col, "--json").stdout)
    assert added["added"] == 2 and all(added["ids"].values())
    query = tmp_path / "query.jpg"  # not indexed itself: searched by content
    shutil.copy(new[0], query)
    hits = json.loads(run("search", query, "-c", col, "-k", "1", "--json").stdout)["results"]
    assert hits[0]["uri"] == str(new[0])

    info = json.loads(run("info", "-c", col, "--json").stdout)
    assert info["delta_vectors"] == 2

    removed = run("remove", str(added["ids"][str(new[0])]), str(sample_dir / "moon.jpg"),
                  "-c", col)
    assert "Removed 2 image(s)" in removed.stdout
    hits = json.loads(run("search", query, "-c", col, "-k", "30", "--json").stdout)["results"]
    assert {str(new[0]), str(sample_dir / "moon.jpg")}.isdisjoint(h["uri"] for h in hits)

    compacted = json.loads(run("compact", "-c", col, "--json").stdout)
    assert compacted["dropped_tombstones"] == 2 and compacted["main_vectors"] == len(hits)
    assert "OK" in run("verify", "-c", col).stdout

    (col / "main.index").write_bytes(b"garbage")
    broken = run("verify", "-c", col, check=False)
    assert broken.returncode == 1
    assert "drift" in broken.stdout and "lookalike rebuild" in broken.stdout
    failing = run("search", new[1], "-c", col, check=False)
    assert failing.returncode == 1 and "lookalike rebuild" in failing.stderr
    rebuilt = json.loads(run("rebuild", "-c", col, "--json").stdout)
    assert rebuilt["main_vectors"] == len(hits)
    assert json.loads(run("verify", "-c", col, "--json").stdout)["ok"] is True


def test_remove_unknown_image_is_a_usage_error(sample_dir: Path, tmp_path: Path) -> None:
    col = tmp_path / "col"
    assert "coffee.jpg" in run("add", sample_dir / "coffee.jpg", "-c", col).stdout  # creates it
    result = run("remove", "424242", "-c", col, check=False)
    assert result.returncode == 2 and "No indexed image 424242" in result.stderr
