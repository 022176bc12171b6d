"""Learned whitening: the math on synthetic copies, the file, and `learn` on a real collection
(by hand, by index and compact when due, followed by other handles and a server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import make_variants
from lookalike import Collection
from lookalike.collection.learning import learning_due
from lookalike.errors import CorruptCollectionError, UsageError
from lookalike.index import PCA, load_projection
from lookalike.index.whitening import LearnedWhitening
from test_cli import run
from test_pca import finds_itself


def _copies(n: int = 400, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors, and copies that moved mostly along 4 nuisance directions (as edits move
    embeddings along a few directions) by more than images differ along them."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, d)) * np.linspace(1.0, 0.3, d)
    nuisance = np.linalg.qr(rng.standard_normal((d, 4)))[0]
    copies = images + rng.standard_normal((n, 4)) * 4.0 @ nuisance.T
    copies += 0.05 * rng.standard_normal((n, d))

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return unit(images), unit(copies)


def _recall_at_1(database: np.ndarray, queries: np.ndarray) -> float:
    return float(np.mean(np.argmax(queries @ database.T, axis=1) == np.arange(len(queries))))


def test_copies_find_their_originals_after_whitening() -> None:
    images, copies = _copies()
    train, test = slice(0, 200), slice(200, 400)  # learnt from other images' copies
    learned = LearnedWhitening.fit(images, images[train], copies[train])
    before = _recall_at_1(images[test], copies[test])
    after = _recall_at_1(learned.apply(images[test]), learned.apply(copies[test]))
    assert before < 0.6 and after > 0.9


def test_full_dimension_matches_the_textbook_whitening() -> None:
    images, copies = _copies()
    learned = LearnedWhitening.fit(images, images[:100], copies[:100], shrinkage=0.5)
    differences = (images[:100] - copies[:100]).astype(np.float64)
    within = differences.T @ differences / 99
    within += 0.5 * np.trace(within) / within.shape[0] * np.eye(within.shape[0])
    values, vectors = np.linalg.eigh(within)
    reference = (images - images.mean(axis=0)) @ (vectors / np.sqrt(values)) @ vectors.T
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    projected = learned.apply(images)
    # The same cosines: whitening is unique up to a rotation, which no inner product sees.
    np.testing.assert_allclose(projected @ projected.T, reference @ reference.T, atol=1e-4)
    assert np.allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)


def test_a_reduced_projection_keeps_the_strongest_whitened_directions() -> None:
    images, copies = _copies()
    full = LearnedWhitening.fit(images, images[:200], copies[:200])
    reduced = LearnedWhitening.fit(images, images[:200], copies[:200], dim=16)
    assert (reduced.in_dim, reduced.dim) == (32, 16)
    assert _recall_at_1(reduced.apply(images[200:]), reduced.apply(copies[200:])) > 0.9
    again = LearnedWhitening.fit(images, images[:200], copies[:200], dim=16)
    np.testing.assert_array_equal(again.matrix, reduced.matrix)  # signs fixed: same file
    assert full.dim == 32


def test_the_file_round_trips_and_says_its_kind(tmp_path: Path) -> None:
    images, copies = _copies()
    learned = LearnedWhitening.fit(images, images[:100], copies[:100], dim=20)
    learned.save(tmp_path / "learned.npz")
    loaded = load_projection(tmp_path / "learned.npz")
    assert isinstance(loaded, LearnedWhitening) and (loaded.pairs, loaded.dim) == (100, 20)
    np.testing.assert_array_equal(loaded.apply(images[:5]), learned.apply(images[:5]))

    pca = PCA.fit(images, 8)
    pca.save(tmp_path / "pca.npz")
    assert isinstance(load_projection(tmp_path / "pca.npz"), PCA)
    with np.load(tmp_path / "pca.npz") as data:  # a PCA file from before kinds existed
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "kind"})
    assert isinstance(load_projection(tmp_path / "old.npz"), PCA)

    with np.load(tmp_path / "learned.npz") as data:
        np.savez(tmp_path / "future.npz", **{**{k: data[k] for k in data.files},
                                            "kind": np.str_("hologram")})
    with pytest.raises(CorruptCollectionError, match="kind 'hologram'"):
        load_projection(tmp_path / "future.npz")
    (tmp_path / "junk.npz").write_bytes(b"not numpy")
    with pytest.raises(CorruptCollectionError, match="lookalike learn"):
        load_projection(tmp_path / "junk.npz")


def test_bad_fits_say_what_is_wrong() -> None:
    images, copies = _copies()
    with pytest.raises(UsageError, match="at least 2 pairs"):
        LearnedWhitening.fit(images, images[:1], copies[:1])
    with pytest.raises(UsageError, match="pairs of 32-d"):
        LearnedWhitening.fit(images, images[:10], copies[:9])
    with pytest.raises(UsageError, match="between 1 and 32"):
        LearnedWhitening.fit(images, images[:10], copies[:10], dim=33)
    with pytest.raises(UsageError, match="copies equal their originals"):
        LearnedWhitening.fit(images, images[:10], images[:10])


# -- a real collection ----------------------------------------------------------------------

def test_learn_keeps_every_path_working_and_other_handles_follow(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    reader = Collection.open(col.path)
    finds_itself(reader, photos[:2])
    report = col.learn()
    assert (report.pairs, report.unreadable, report.trained_on) == (len(photos), 0, len(photos))
    assert (report.dim_before, report.dim_after, report.vectors) == (1280, 1280, len(photos))
    entry = col.manifest.pca
    assert entry is not None and entry.learned and entry.pairs == len(photos)
    assert isinstance(col.live.projection, LearnedWhitening)
    finds_itself(col, photos)
    finds_itself(reader, photos[:3])  # switched on its next search
    assert isinstance(reader.live.projection, LearnedWhitening)

    new = make_variants(sample_dir, tmp_path / "new", 2)
    col.add(new, workers=0, show_progress=False, learn=False)  # into the delta, projected
    finds_itself(col, new)
    col.compact()
    assert col.verify().ok and col.info().main_vectors == len(photos) + 2

    reduced = col.learn(dim=8, seed=1)
    assert reduced.dim_after == 8 and col.index_dim == 8
    finds_itself(reader, photos[:3])
    assert len(list(col.path.glob("pca-*.npz"))) == 1  # the old one is gone

    off = col.learn(off=True)
    assert off.pairs == 0 and off.dim_after == 1280
    manifest = json.loads((col.path / "manifest.json").read_text())
    assert "pca" not in manifest and manifest["learn"] is False
    assert not list(col.path.glob("pca-*.npz")) and col.verify().ok
    finds_itself(reader, photos[:2])


def test_index_and_compact_learn_when_due(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOKALIKE_LEARN_MIN_IMAGES", "20")
    images = make_variants(sample_dir, tmp_path / "images", 50)
    with Collection.create(tmp_path / "col") as col:
        assert col.index(images[:16], workers=0).learned is None  # not enough images yet
        first = col.index(images[:24], workers=0).learned
        assert first is not None and first.pairs == 24
        assert col.index(images[:40], workers=0).learned is None  # not yet twice as many
        assert col.index(images[:48], workers=0, learn=False).learned is None
        assert learning_due(col.manifest, 48)
        second = col.learn_if_due()
        assert second is not None and col.manifest.pca.trained_on == 48

        col.reduce(8)  # a PCA chosen by hand is kept
        assert not learning_due(col.manifest, 1_000_000)
        off = col.learn(off=True)  # nothing learnt to remove: the PCA stays, learning stops
        assert off.off and off.vectors == 0 and col.manifest.pca.kind == "pca"
        assert not learning_due(col.manifest, 1_000_000) and not col.info().learn
        assert col.learn().dim_after == 8  # at the dimension reduce chose
        assert learning_due(col.manifest, 96) and not learning_due(col.manifest, 95)
        col.learn(off=True)
        assert col.manifest.pca is None and not learning_due(col.manifest, 1_000_000)
        col.remove(images[24:48])
        col.learn(dim=12)  # at 24 images: due again at 48
        assert col.index(images, workers=0).learned.dim_after == 12  # relearnt as chosen
    monkeypatch.setenv("LOOKALIKE_LEARN_MIN_IMAGES", "0")
    with Collection.open(tmp_path / "col") as col:
        assert not learning_due(col.manifest, 1_000_000)


def test_files_changed_or_gone_since_indexing_are_not_learnt_from(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_variants(sample_dir, tmp_path / "images", 24)
    with Collection.create(tmp_path / "col") as col:
        col.index(images, workers=0, learn=False)
        images[0].unlink()
        Image.new("RGB", (90, 60), "red").save(images[1])  # another picture, same name
        report = col.learn(workers=0)
        assert (report.pairs, report.unreadable) == (22, 2)
        for image in images[:2]:
            image.unlink(missing_ok=True)
        shutil.rmtree(tmp_path / "images")
        with pytest.raises(UsageError, match="could be read again"):
            col.learn()
        assert col.manifest.pca.pairs == 22  # the failed learn changed nothing
        col.reduce(0)
        monkeypatch.setenv("LOOKALIKE_LEARN_MIN_IMAGES", "10")
        with pytest.warns(UserWarning, match="Not learning .* could be read again"):
            assert col.learn_if_due() is None  # what index does: its run stays a success


def test_a_server_switches_without_a_restart(live_server, sample_dir: Path) -> None:
    coffee = (sample_dir / "coffee.jpg").read_bytes()
    with Collection.open(live_server.collection_path) as col:
        col.learn()
    hit = httpx.post(f"{live_server.url}/search/visual?k=1", content=coffee).json()["results"][0]
    assert hit["uri"] == str(sample_dir / "coffee.jpg") and hit["score"] > 0.999
    stats = httpx.get(f"{live_server.url}/stats").json()
    assert stats["index"]["projection"]["kind"] == "learned"


def test_cli_learn_info_compact_and_off(sample_collection: Path, sample_dir: Path,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "col"
    shutil.copytree(sample_collection, path)
    report = json.loads(run("learn", "-c", path, "--json").stdout)
    assert report["pairs"] == 18 and report["dim_after"] == 1280 and report["seconds"] > 0
    assert "learned     1280 -> 1280 dimensions" in run("info", "-c", path).stdout
    hits = json.loads(run("search", sample_dir / "coffee.jpg", "-c", path, "--json").stdout)
    assert len(hits["results"]) == 10  # the query's own file is left out
    assert "OK" in run("verify", "-c", path).stdout
    bad = run("learn", "--off", "--dim", 8, "-c", path, check=False)
    assert bad.returncode == 2 and "--off takes no --dim" in bad.stderr
    few = run("learn", "--pairs", 3, "-c", path, check=False)
    assert few.returncode == 2 and "x>=16" in few.stderr
    assert "back to 1280 dimensions" in run("learn", "--off", "-c", path).stdout
    assert "No learned projection to remove" in run("learn", "--off", "-c", path).stdout
    assert "learning    off" in run("info", "-c", path).stdout

    monkeypatch.setenv("LOOKALIKE_LEARN_MIN_IMAGES", "10")
    assert "Main index: 18 vectors" in run("compact", "-c", path).stdout  # turned off
    run("learn", "-c", path)
    shutil.copytree(sample_collection, tmp_path / "fresh")
    assert "Main index" in run("compact", "--no-learn", "-c", tmp_path / "fresh").stdout
    assert "Learned this collection's invariances from 18 images" in run(
        "compact", "-c", tmp_path / "fresh").stdout
    monkeypatch.setenv("LOOKALIKE_LEARN_PAIRS", "5")
    shutil.copytree(sample_collection, tmp_path / "few")
    warned = run("compact", "-c", tmp_path / "few")  # still a successful compaction
    assert "Warning: Not learning this collection's invariances: --pairs (setting " \
           "learn_pairs) must be at least 16" in warned.stderr
    assert "UserWarning" not in warned.stderr and "Main index" in warned.stdout
