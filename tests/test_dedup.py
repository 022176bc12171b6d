"""Duplicates across a collection: the self-join, groups around a representative, decisions that
persist, actions and their undo, checking on arrival and screening against a watchlist — on real
photos with the real model, and on synthetic vectors with exact ground truth."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import LiveServer
from lookalike.collection import Collection
from lookalike.dedup import decide, find_duplicates, thresholds_for
from lookalike.dedup.actions import act, undo
from lookalike.dedup.groups import make_groups
from lookalike.dedup.pairs import Pair
from lookalike.errors import UsageError
from lookalike.index.selfjoin import EXACT_MAX, similar_pairs
from lookalike.storage import Decision, ImageRecord
from test_cli import run

UNRELATED = ("brick", "camera", "clock", "coins", "moon")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int, dim: int, pairs: int, seed: int = 0) -> tuple[np.ndarray, set, np.ndarray]:
    """``n`` clustered unit vectors of which ``pairs`` are copies of others at cosines 0.9-0.99."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dim))
    x = unit(centres[rng.integers(0, 64, n)] + 0.8 * rng.standard_normal((n, dim)))
    order = rng.permutation(n)
    src, dst = order[:pairs], order[pairs:2 * pairs]
    cosines = rng.uniform(0.9, 0.99, pairs)
    noise = rng.standard_normal((pairs, dim))
    noise -= (noise * x[src]).sum(1, keepdims=True) * x[src]
    noise = unit(noise)
    x[dst] = unit(cosines[:, None] * x[src] + np.sqrt(1 - cosines[:, None] ** 2) * noise)
    return x, {(min(a, b), max(a, b)) for a, b in zip(src, dst, strict=True)}, cosines


# -- the self-join ----------------------------------------------------------------------------

def test_self_join_is_every_pair_above_the_threshold_each_once() -> None:
    x, _, _ = planted(600, 16, 30)
    found = similar_pairs(x, 0.8, max_per_row=1000)
    scores = x @ x.T
    expected = {(a, b) for a, b in zip(*np.nonzero(scores >= 0.8), strict=True) if a < b}
    assert set(zip(found.left.tolist(), found.right.tolist(), strict=True)) == expected
    assert np.allclose(found.score, scores[found.left, found.right], atol=1e-5)
    capped = similar_pairs(x, 0.5, max_per_row=3)
    every = similar_pairs(x, 0.5, max_per_row=len(x))
    partners: dict[int, list[tuple[float, int, int]]] = {}
    for a, b, score in zip(every.left.tolist(), every.right.tolist(), every.score.tolist(),
                           strict=True):
        partners.setdefault(a, []).append((-score, a, b))
        partners.setdefault(b, []).append((-score, a, b))
    best3 = {(a, b) for found in partners.values() for _, a, b in sorted(found)[:3]}
    assert set(zip(capped.left.tolist(), capped.right.tolist(), strict=True)) == best3
    assert len(best3) < len(every)


def test_a_large_self_join_partitions_and_still_finds_the_planted_copies() -> None:
    n = EXACT_MAX + 5_000
    x, truth, _ = planted(n, 32, 300, seed=3)
    found = similar_pairs(x.astype(np.float16), 0.89)
    pairs = set(zip(found.left.tolist(), found.right.tolist(), strict=True))
    assert len(truth & pairs) / len(truth) >= 0.99
    assert np.all(found.score >= 0.89) and np.all(found.left < found.right)


# -- groups around a representative ---------------------------------------------------------

def record(image_id: int, uri: str, *, width: int = 100, height: int = 100, size: int = 1000,
           digest: str | None = None, mtime: int = 0) -> ImageRecord:
    return ImageRecord(image_id, uri, size, mtime, digest or f"h{image_id}", width, height,
                       "active", None)


def test_chains_do_not_merge_groups_and_every_member_passes_against_the_representative(
) -> None:
    records = {i: record(i, f"/p/{i}.jpg", width=100 - i) for i in range(1, 6)}
    # 1 - 2 - 3 - 4 a chain of look-alikes, 5 alone with 4; 1 and 3 are not alike.
    pairs = [Pair(1, 2, 0.95, "near"), Pair(2, 3, 0.95, "near"), Pair(3, 4, 0.95, "near"),
             Pair(4, 5, 0.97, "near")]
    groups = make_groups(pairs, records)
    assert [g.ids for g in groups] == [[1, 2], [3, 4]]  # 5 is left out: 4 took a group first
    linked = {frozenset((p.a, p.b)) for p in pairs}
    assert all(frozenset((g.keep.image_id, m.image_id)) in linked
               for g in groups for m in g.members)
    assert groups[0].reason == "largest resolution (99x100)"
    assert groups[0].weakest == pytest.approx(0.95)


def test_a_look_alike_never_takes_an_original_away_from_its_copies() -> None:
    records = {1: record(1, "/p/big.jpg", width=400), 2: record(2, "/p/photo.jpg"),
               3: record(3, "/p/photo-small.jpg", width=50), 4: record(4, "/p/other.jpg")}
    pairs = [Pair(1, 2, 0.80, "similar"), Pair(2, 3, 0.95, "near"), Pair(1, 4, 0.78, "similar")]
    [copies, shots] = make_groups(pairs, records)
    assert (copies.keep.image_id, [(m.image_id, m.tier) for m in copies.members]) == (
        2, [(3, "near")])
    assert (shots.keep.image_id, [m.image_id for m in shots.members]) == (1, [4])
    [joined] = make_groups(pairs[:2], records)  # a look-alike with nobody else joins the copies
    assert [(m.image_id, m.tier) for m in joined.members] == [(3, "near"), (1, "similar")]


def test_groups_are_capped_and_the_copy_to_keep_follows_the_rules(tmp_path: Path) -> None:
    records = {1: record(1, "/a/x.jpg", size=900), 2: record(2, "/a/x.png", size=500),
               3: record(3, "/b/x.jpg", size=800), 4: record(4, "/a/y.jpg", size=100)}
    star = [Pair(a, b, 0.99, "near") for a in range(1, 5) for b in range(a + 1, 5)]
    [group] = make_groups(star, records, max_size=3)
    assert group.keep.image_id == 2 and group.reason == "lossless format (PNG)"
    assert len(group.members) == 2
    [group] = make_groups(star, records, prefer=["/b"])
    assert (group.keep.image_id, group.reason) == (3, "in the preferred folder /b")
    chosen = [Decision.of("h4", "h1", "duplicate", "h4")]
    [group] = make_groups(star, records, chosen)
    assert (group.keep.image_id, group.reason) == (4, "chosen by you")
    with pytest.raises(ValueError):
        make_groups(star, records, max_size=1)


# -- on real photos ------------------------------------------------------------------------

def plant(sample_dir: Path, folder: Path) -> dict[str, Path]:
    """Photos with planted duplicates of each tier among unrelated ones."""
    folder.mkdir(parents=True)
    for name in ("astronaut", "chelsea", "coffee", *UNRELATED):
        shutil.copy(sample_dir / f"{name}.jpg", folder / f"{name}.jpg")
    made = {"bytes": folder / "copies" / "astronaut.jpg", "pixels": folder / "chelsea.png",
            "near": folder / "coffee-small.jpg", "similar": folder / "rocket-left.jpg"}
    made["bytes"].parent.mkdir()
    shutil.copy(folder / "astronaut.jpg", made["bytes"])
    Image.open(folder / "chelsea.jpg").save(made["pixels"])  # the same decoded pixels
    coffee = Image.open(folder / "coffee.jpg")
    coffee.resize((coffee.width // 2, coffee.height // 2)).save(made["near"], quality=60)
    # One scene, two shots: the left and right 60 % of a photo (neither holds the other).
    rocket = Image.open(sample_dir / "rocket.jpg")
    rocket.crop((0, 0, int(rocket.width * 0.6), rocket.height)).save(made["similar"])
    rocket.crop((int(rocket.width * 0.4), 0, rocket.width, rocket.height)).save(
        folder / "rocket-right.jpg")
    return made


@pytest.fixture
def planted_collection(sample_dir: Path, tmp_path: Path) -> tuple[Collection, dict[str, Path]]:
    made = plant(sample_dir, tmp_path / "photos")
    col = Collection.create(tmp_path / "dupes.lookalike")
    col.index([tmp_path / "photos"], workers=0, show_progress=False)
    return col, made


def uris(group: object) -> set[str]:
    return {group.keep.uri, *(m.uri for m in group.members)}  # type: ignore[attr-defined]


def test_planted_duplicates_of_each_tier_are_found_and_unrelated_photos_are_not(
        planted_collection: tuple[Collection, dict[str, Path]]) -> None:
    col, made = planted_collection
    folder = made["pixels"].parent
    report = find_duplicates(col, tier="similar")
    by_tier = {(m.tier, m.how): uris(g) for g in report.groups for m in g.members}
    assert by_tier[("exact", "same bytes")] >= {str(made["bytes"]), str(folder / "astronaut.jpg")}
    assert by_tier[("exact", "same pixels")] == {str(made["pixels"]), str(folder / "chelsea.jpg")}
    assert by_tier[("near", "")] == {str(made["near"]), str(folder / "coffee.jpg")}
    assert by_tier[("similar", "")] == {str(made["similar"]), str(folder / "rocket-right.jpg")}
    grouped = set().union(*(uris(g) for g in report.groups))
    assert grouped.isdisjoint(str(folder / f"{name}.jpg") for name in UNRELATED)
    coffee = next(g for g in report.groups if g.tier == "near")
    assert coffee.keep.uri == str(folder / "coffee.jpg")
    assert coffee.reason.startswith("largest resolution")
    near = find_duplicates(col)  # the default: near, and nothing only similar
    assert {m.tier for g in near.groups for m in g.members} == {"exact", "near"}
    exact = find_duplicates(col, tier="exact")
    assert {m.how for g in exact.groups for m in g.members} == {"same bytes", "same pixels"}


def test_not_duplicates_survive_reruns_reindexing_renames_and_moves(
        planted_collection: tuple[Collection, dict[str, Path]]) -> None:
    col, made = planted_collection
    coffee = col.find(made["near"].parent / "coffee.jpg")
    small = col.find(made["near"])
    assert coffee and small
    assert decide(col, [small, coffee], "distinct") == 1
    assert all(small not in g.ids for g in find_duplicates(col).groups)
    moved = made["near"].parent / "elsewhere" / "renamed.jpg"
    moved.parent.mkdir()
    os.rename(made["near"], moved)
    col.index([made["near"].parent], workers=0, show_progress=False)
    col.rebuild()
    report = find_duplicates(col)
    assert all(str(moved) not in uris(g) for g in report.groups)
    with Collection.open(col.path) as again:  # another process's view: from the store
        assert all(str(moved) not in uris(g) for g in find_duplicates(again).groups)
        decide(again, [again.find(moved) or 0, coffee], None)  # forget it
    assert any(str(moved) in uris(g) for g in find_duplicates(col).groups)
    # Confirmed duplicates: the two shots of one scene become a near group, kept as chosen.
    left, right = col.find(made["similar"]), col.find(made["similar"].parent / "rocket-right.jpg")
    assert left and right
    decide(col, [left, right], "duplicate", keep=right)
    [group] = [g for g in find_duplicates(col).groups if right in g.ids]
    assert (group.keep.image_id, group.reason) == (right, "chosen by you")
    assert [(m.image_id, m.tier, m.how) for m in group.members] == [
        (left, "near", "confirmed by you")]
    with pytest.raises(UsageError, match="two or more"):
        decide(col, [coffee, coffee], "distinct")


def test_quarantine_moves_the_copies_not_kept_and_undo_puts_everything_back(
        planted_collection: tuple[Collection, dict[str, Path]], tmp_path: Path) -> None:
    col, made = planted_collection
    folder = made["near"].parent
    os.link(folder / "coins.jpg", folder / "coins-link.jpg")  # one file listed twice
    col.index([folder], workers=0, show_progress=False)
    groups = find_duplicates(col, tier="similar").groups
    changed = made["pixels"]  # touched after the scan: never acted on
    os.utime(changed, ns=(1, 1))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    plan = act(col, groups, "quarantine", to=tmp_path / "q")
    assert not plan.applied and not (tmp_path / "q").exists()  # a dry run by default
    skipped = {s.uri: s.skipped for s in plan.steps if s.skipped}
    similar = skipped.get(str(made["similar"])) or skipped[str(folder / "rocket-right.jpg")]
    assert similar == "only similar: never acted on"
    assert "changed since it was indexed" in (skipped.get(str(changed))
                                               or skipped[str(folder / "chelsea.jpg")])
    link = skipped.get(str(folder / "coins-link.jpg")) or skipped[str(folder / "coins.jpg")]
    assert link == "the same file as the kept copy (same device and inode)"
    with pytest.raises(UsageError, match="holds indexed images"):
        act(col, groups, "quarantine", to=folder / "copies" / "q")  # `index` would add it back
    done = act(col, groups, "quarantine", to=tmp_path / "q", apply=True)
    moved = {s.uri: s.target for s in done.acted}
    assert set(moved) == {str(made["bytes"]), str(made["near"])}
    assert (tmp_path / "q" / "copies" / "astronaut.jpg").is_file()  # relative paths kept
    assert all(col.find(uri) is None for uri in moved)  # out of the collection too
    assert (folder / "coins.jpg").is_file() and (folder / "coins-link.jpg").is_file()
    with Collection.create(tmp_path / "other.lookalike") as other, \
            pytest.raises(UsageError, match="records an action on"):
        undo(other, done.manifest)  # type: ignore[arg-type]
    restored = undo(col, done.manifest)  # type: ignore[arg-type]
    assert sorted(restored.restored) == sorted(moved)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert all(col.find(uri) is not None for uri in moved)
    assert undo(col, done.manifest).restored == []  # type: ignore[arg-type]


def test_hardlinks_replace_only_identical_files_and_undo_separates_them(
        planted_collection: tuple[Collection, dict[str, Path]]) -> None:
    col, made = planted_collection
    original = made["bytes"].parent.parent / "astronaut.jpg"
    stat = made["bytes"].stat()
    done = act(col, find_duplicates(col).groups, "hardlink", apply=True)
    assert [s.uri for s in done.acted] == [str(made["bytes"])] or \
        [s.uri for s in done.acted] == [str(original)]
    assert os.path.samefile(made["bytes"], original)
    assert any(s.skipped == "not the same bytes: only identical files are hard-linked"
               for s in done.steps)
    undo(col, done.manifest)  # type: ignore[arg-type]
    assert not os.path.samefile(made["bytes"], original)
    assert made["bytes"].read_bytes() == original.read_bytes()
    linked = Path(done.acted[0].uri).stat()
    if done.acted[0].uri == str(made["bytes"]):
        assert (linked.st_mtime_ns, linked.st_mode) == (stat.st_mtime_ns, stat.st_mode)


# -- on arrival, screening, the command line and HTTP --------------------------------------

def test_add_check_dedup_and_screen_on_the_command_line(sample_dir: Path, tmp_path: Path) -> None:
    made = plant(sample_dir, tmp_path / "photos")
    col = tmp_path / "col"
    run("index", tmp_path / "photos", "-c", col)
    new = tmp_path / "new.jpg"
    Image.open(made["near"]).save(new, quality=90)
    added = json.loads(run("add", new, "-c", col, "--check", "--json").stdout)
    found = added["duplicates"][str(new)]
    assert {d["uri"] for d in found} >= {str(made["near"])}
    assert {d["tier"] for d in found} <= {"exact", "near"}
    report = json.loads(run("dedup", "-c", col, "--json").stdout)
    assert report["preset"] == "normal" and report["groups"]
    rows = run("dedup", "-c", col, "--tier", "exact", "--csv").stdout.splitlines()
    assert rows[0].startswith("group,role,id,uri,tier") and len(rows) == 5
    screened = run("screen", tmp_path / "photos" / "coffee.jpg", sample_dir / "grass.jpg",
                   "--against", col, "--fail-on-match", check=False)
    assert screened.returncode == 3
    assert [line.split()[0] for line in screened.stdout.splitlines()] == ["MATCH", "clear"]
    bad = run("dedup", "-c", col, "--preset", "normal", "--threshold", "0.9", check=False)
    assert bad.returncode == 2 and "not both" in bad.stderr
    same = run("dedup", "-c", col, "--distinct", made["bytes"], made["bytes"].parent.parent /
               "astronaut.jpg", check=False)
    assert same.returncode == 2 and "the same bytes" in same.stderr
    (tmp_path / "notes.jpg").write_text("not an image")
    unread = run("screen", tmp_path / "notes.jpg", "--against", col, check=False)
    assert unread.returncode == 1 and unread.stdout.startswith("error")


def test_http_duplicates_decisions_upload_check_and_screening(
        planted_collection: tuple[Collection, dict[str, Path]], sample_dir: Path,
        start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    col, made = planted_collection
    col.close()
    watchlist = Collection.create(tmp_path / "watch.lookalike")
    watchlist.index([sample_dir / "moon.jpg"], workers=0, show_progress=False)
    watchlist.close()
    server = start_server(col.path, screen_against=str(tmp_path / "watch.lookalike"),
                          screen_action="reject", api_key="reader", write_key="writer")
    with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": "writer"}) as http:
        refused = http.post("/duplicates/decisions", headers={"X-API-Key": "reader"},
                            json={"images": [1, 2], "verdict": "distinct"})
        assert refused.status_code == 403  # a decision changes the collection: the write key
        page = http.get("/duplicates", params={"per_page": 1}).json()
        assert page["total_groups"] >= 3 and len(page["groups"]) == 1
        assert page["groups"][0]["keep"]["thumbnail_url"].startswith("/images/")
        near = next(g for g in http.get("/duplicates").json()["groups"] if g["tier"] == "near")
        ids = [near["keep"]["id"], near["members"][0]["id"]]
        assert http.post("/duplicates/decisions",
                         json={"images": ids, "verdict": "distinct"}).json()["pairs"] == 1
        groups = http.get("/duplicates").json()["groups"]
        assert all(ids[1] not in [m["id"] for m in g["members"]] for g in groups)
        bad = http.post("/duplicates/decisions", json={"images": ids, "verdict": "maybe"})
        assert bad.status_code == 400 and "Unknown verdict" in bad.json()["error"]["message"]
        copy = made["near"].read_bytes()
        upload = http.post("/images", params={"check_duplicates": "true"}, content=copy)
        assert upload.status_code in (200, 201), upload.text
        assert upload.json()["screened"] is None
        assert {d["id"] for d in upload.json()["duplicates"]} >= {ids[1]}
        refused = http.post("/images", content=(sample_dir / "moon.jpg").read_bytes())
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "screened"


def test_thresholds_come_from_the_calibration_or_say_how_to_get_them() -> None:
    normal = thresholds_for("efficientnet-lite0-gem")
    assert normal.preset == "normal" and normal.near.precision is not None
    assert normal.near.verified and normal.tier_of(0.99, None) == "similar"  # unchecked
    assert normal.tier_of(normal.near.threshold, (1.0, 1.0)) == "near"
    cosine = thresholds_for("efficientnet-lite0-gem", verify=False)
    assert not cosine.near.verified and cosine.tier_of(cosine.near.threshold) == "near"
    strict = thresholds_for("efficientnet-lite0-gem", preset="strict", verify=False)
    loose = thresholds_for("efficientnet-lite0-gem", preset="loose", verify=False)
    assert loose.near.threshold <= cosine.near.threshold <= strict.near.threshold
    assert cosine.similar.threshold < cosine.near.threshold
    with pytest.raises(UsageError, match="--threshold"):
        thresholds_for("test-tiny")
    assert thresholds_for("test-tiny", threshold=0.9).near.threshold == 0.9
    mine = thresholds_for("efficientnet-lite0-gem", threshold=0.9)  # the pixel check stays on
    assert mine.near.verified and mine.near.aligned == normal.near.aligned
    with pytest.raises(UsageError, match="Unknown preset"):
        thresholds_for("efficientnet-lite0-gem", preset="lenient")
