"""`lookalike eval`: metrics against hand-computed values, edits, copy-detection sets, αQE/DBA,
and the real command end to end on scikit-image's photos with the default model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.errors import UnknownNameError, UsageError
from lookalike.evaluation import (
    EDITS,
    Pipeline,
    apply_edit,
    build_copydetect,
    load_copydetect,
    read_labelled,
    score_labelled,
    score_queries,
)
from lookalike.index.expansion import (
    alpha_query_expansion,
    database_augmentation,
    nearest,
)

# -- metrics ---------------------------------------------------------------------------------


def test_average_precision_recall_and_hits_from_known_ranks() -> None:
    # Relevant items at ranks 1, 3 and 6 of 6: AP = (1/1 + 2/3 + 3/6) / 3.
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                       [0.1, 0.9, 0.2, 0.3, 0.8, 0.7]])
    relevant = np.array([[1, 0, 1, 0, 0, 1],
                         [1, 0, 0, 0, 0, 0]], bool)  # 2nd query: its only relevant item is last
    result = score_queries(scores, relevant, ks=(1, 3, 5))
    assert result.ap == pytest.approx([(1 + 2 / 3 + 3 / 6) / 3, 1 / 6])
    assert result.first_rank.tolist() == [1, 6]
    np.testing.assert_allclose(result.recall, [[1 / 3, 2 / 3, 2 / 3], [0, 0, 0]])
    assert result.hit.tolist() == [[1, 1, 1], [0, 0, 0]]
    summary = result.summary()
    assert summary.map == pytest.approx(((1 + 2 / 3 + 0.5) / 3 + 1 / 6) / 2)
    assert summary.precision_at_1 == 0.5
    assert summary.recall_at[3] == pytest.approx(1 / 3) and summary.hit_at[5] == 0.5


def test_ties_rank_relevant_items_last_and_exclusion_removes_the_query() -> None:
    tied = score_queries(np.zeros((1, 4)), np.array([[1, 0, 0, 1]], bool), ks=(1, 2))
    assert tied.ap[0] == pytest.approx((1 / 3 + 2 / 4) / 2)  # ranks 3 and 4 of 4
    assert tied.first_rank[0] == 3 and tied.hit[0].tolist() == [0, 0]
    # Item 0 is the query itself: it must neither count as relevant nor take a rank.
    scores = np.array([[1.0, 0.2, 0.9, 0.5]])
    relevant = np.array([[1, 1, 0, 1]], bool)
    exclude = np.array([[1, 0, 0, 0]], bool)
    result = score_queries(scores, relevant, ks=(1, 2, 3), exclude=exclude)
    assert result.relevant[0] == 2
    assert result.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)  # ranks 2 and 3 of the other 3
    assert result.recall[0].tolist() == pytest.approx([0, 0.5, 1])


def test_queries_without_relevant_items_are_skipped_and_counted() -> None:
    result = score_queries(np.eye(3), np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]], bool), (1,))
    summary = result.summary()
    assert (summary.queries, summary.skipped, summary.map) == (2, 1, 1.0)
    with pytest.raises(UsageError):
        score_queries(np.zeros((2, 3)), np.zeros((2, 4), bool), (1,))


# -- αQE and DBA -----------------------------------------------------------------------------


def _unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_alpha_query_expansion_follows_the_formula() -> None:
    db = _unit([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [-1, 0, 0]])
    q = _unit([[0.6, 0.8, 0]])
    sims = (q @ db.T)[0]  # 0.6, 0.96, 0.8, -0.6 -> neighbours 1 then 2
    expanded = alpha_query_expansion(q, db, n=2, alpha=3.0)
    expected = q[0] + sims[1] ** 3 * db[1] + sims[2] ** 3 * db[2]
    assert expanded[0] == pytest.approx(expected / np.linalg.norm(expected), abs=1e-6)
    # alpha = 0 is average query expansion; a neighbour with negative similarity weighs nothing.
    plain = alpha_query_expansion(q, db, n=4, alpha=0.0)[0]
    expected = q[0] + db[0] + db[1] + db[2]
    assert plain == pytest.approx(expected / np.linalg.norm(expected), abs=1e-6)
    assert alpha_query_expansion(q, db, n=0)[0] == pytest.approx(q[0])
    with pytest.raises(UsageError, match="neighbours"):
        alpha_query_expansion(q, db, n=5)


def test_database_augmentation_uses_other_vectors_only() -> None:
    db = _unit([[1, 0], [0.6, 0.8], [0, 1]])
    augmented = database_augmentation(db, n=1, alpha=2.0)
    sims = db @ db.T
    # Row 0's nearest other vector is row 1; row 1's is row 2 (0.8 > 0.6); row 2's is row 1.
    for row, other in ((0, 1), (1, 2), (2, 1)):
        expected = db[row] + sims[row, other] ** 2 * db[other]
        assert augmented[row] == pytest.approx(expected / np.linalg.norm(expected), abs=1e-6)
    assert np.linalg.norm(augmented, axis=1) == pytest.approx(np.ones(3))
    _, rows = nearest(db, db, 2, exclude=np.arange(3))
    assert all(i not in r for i, r in enumerate(rows))


def test_leave_one_out_dba_equals_recomputing_it_without_the_query() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(14, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(14) % 3
    pipeline = Pipeline("any", dba=2, qe=2, dba_alpha=3.0, qe_alpha=3.0)
    scores, _, _ = score_labelled(x, labels, pipeline, ks=(1, 5))
    for i in range(14):  # by brute force: the database is the other 13 images
        others = np.delete(np.arange(14), i)
        db = database_augmentation(x[others], 2, 3.0)
        q = alpha_query_expansion(x[i:i + 1], db, 2, 3.0)
        expected = score_queries(q @ db.T, labels[others][None] == labels[i], (1, 5))
        assert scores.ap[i] == pytest.approx(expected.ap[0], abs=1e-6)


# -- edits and copy-detection sets -----------------------------------------------------------


@pytest.fixture(scope="module")
def photo(sample_dir: Path) -> Image.Image:
    image = Image.open(sample_dir / "astronaut.jpg").convert("RGB")
    return image.resize((160, 160))


@pytest.mark.parametrize("name", list(EDITS))
def test_each_edit_is_deterministic_for_a_seed_and_changes_the_image(
    name: str, photo: Image.Image
) -> None:
    first, detail = apply_edit(name, photo, np.random.default_rng(5))
    again, same_detail = apply_edit(name, photo, np.random.default_rng(5))
    assert first.mode == "RGB" and detail == same_detail
    assert np.array_equal(np.asarray(first), np.asarray(again))
    changed = first.size != photo.size or not np.array_equal(np.asarray(first),
                                                             np.asarray(photo))
    assert changed, f"{name} left the image as it was"
    if name not in ("grey", "flip"):  # the only edits without random parameters
        others = {apply_edit(name, photo, np.random.default_rng(s))[1] for s in range(6)}
        assert len(others) > 1, f"{name} ignores its random generator"


def test_unknown_edit_is_a_clear_error(photo: Image.Image, tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="crop"):
        apply_edit("sepia", photo, np.random.default_rng())


def test_copy_detection_sets_are_reproducible_and_cached(sample_dir: Path, tmp_path: Path) -> None:
    kwargs = {"originals": 2, "distractors": 4, "seed": 11, "edits": ("crop", "text", "chain")}
    a = build_copydetect(sample_dir, tmp_path / "a", **kwargs)
    b = build_copydetect(sample_dir, tmp_path / "b", **kwargs)
    assert a.database == b.database and len(set(a.database)) == 6
    assert [(q.original, q.edit, q.detail) for q in a.queries] == [
        (q.original, q.edit, q.detail) for q in b.queries]
    assert len(a.queries) == 6 and a.edits == ["crop", "text", "chain"]
    for qa, qb in zip(a.queries, b.queries, strict=True):
        assert qa.path.read_bytes() == qb.path.read_bytes()
    stamp = a.queries[0].path.stat().st_mtime_ns
    again = build_copydetect(sample_dir, tmp_path / "a", **kwargs)  # same recipe: reused
    assert again == a and a.queries[0].path.stat().st_mtime_ns == stamp
    assert load_copydetect(tmp_path / "a") == a
    other = build_copydetect(sample_dir, tmp_path / "c", **{**kwargs, "seed": 12})
    assert other.database != a.database
    with pytest.raises(UsageError, match="Lower --originals"):
        build_copydetect(sample_dir, tmp_path / "d", originals=10, distractors=10)


def test_labelled_folder_skips_small_classes(tmp_path: Path, photo: Image.Image) -> None:
    for cls, n in (("a", 2), ("b", 3), ("c", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            photo.save(tmp_path / cls / f"{i}.jpg")
    dataset = read_labelled(tmp_path)
    assert dataset.classes == ["a", "b"] and dataset.small_classes == ["c"]
    assert dataset.labels.tolist() == [0, 0, 1, 1, 1]
    with pytest.raises(UsageError, match="sub-folder per class"):
        read_labelled(tmp_path / "a")


# -- the real command ------------------------------------------------------------------------


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lookalike", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def labelled_dir(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of seeded crops of three scikit-image photos, and one broken file."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(0)
    for name in ("astronaut", "coffee", "chelsea"):
        (root / name).mkdir()
        image = Image.open(sample_dir / f"{name}.jpg").convert("RGB")
        for i in range(4):
            cropped, _ = apply_edit("crop", image, rng)
            cropped.save(root / name / f"{i}.jpg")
    (root / "coffee" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_cli_labelled_end_to_end(labelled_dir: Path) -> None:
    done = run("eval", "labelled", labelled_dir, "--json", "-k", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["images"], report["classes"], report["dim"]) == (12, 3, 1280)
    assert report["map"] > 0.9 and report["precision_at_1"] > 0.9
    assert set(report["recall_at"]) == {"1", "3"} and report["hit_at"]["3"] == 1.0
    assert [f["path"].endswith("broken.jpg") for f in report["failed"]] == [True]
    text = run("eval", "labelled", labelled_dir, "--pca", "8", "--whiten", "--qe", "1")
    assert text.returncode == 0, text.stderr
    assert "PCA-8w + αQE(1, α=3)" in text.stdout and "mAP" in text.stdout
    assert "failed:" in text.stdout and "broken.jpg" in text.stdout
    learned = run("eval", "labelled", labelled_dir, "--learn")  # learnt from its own images
    assert learned.returncode == 0, learned.stderr
    assert "learned whitening + αQE(2, α=3)" in learned.stdout and "mAP" in learned.stdout


def test_cli_copydetect_end_to_end(sample_dir: Path, tmp_path: Path) -> None:
    done = run("eval", "copydetect", sample_dir, "--originals", "3", "--distractors", "6",
               "--cache", tmp_path / "cd", "--json", "--dba", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["database"] == 9 and report["total"]["queries"] == 3 * len(EDITS)
    assert list(report["per_edit"]) == list(EDITS)
    assert report["total"]["recall_at"]["1"] >= 0.8  # the photos are easy to tell apart
    # Unless told otherwise, eval measures what a search does: the default model and its αQE.
    assert report["pipeline"]["steps"] == "DBA(1, α=3) + αQE(2, α=3)"
    assert report["pipeline"]["model"] == "efficientnet-lite0-gem"
    assert (tmp_path / "cd" / "manifest.json").is_file()
    learned = run("eval", "copydetect", sample_dir, "--originals", "3", "--distractors", "6",
                  "--cache", tmp_path / "cd", "--json", "--learn")  # the same set, cached
    assert learned.returncode == 0, learned.stderr
    report = json.loads(learned.stdout)
    assert report["pipeline"]["steps"] == "learned whitening + αQE(2, α=3)"
    assert report["total"]["recall_at"]["1"] >= 0.8 and report["pipeline"]["learn"]


def test_cli_errors_are_one_clear_message(tmp_path: Path, labelled_dir: Path) -> None:
    (tmp_path / "only").mkdir()
    done = run("eval", "labelled", tmp_path)
    assert done.returncode == 2 and "sub-folder per class" in done.stderr
    assert "Traceback" not in done.stderr
    done = run("eval", "labelled", labelled_dir, "--whiten")
    assert done.returncode == 2 and "--whiten needs --pca" in done.stderr
    done = run("eval", "labelled", labelled_dir, "--learn", "--pca", "8")
    assert done.returncode == 2 and "--learn and --pca are two projections" in done.stderr
