"""PCA: the math against a numpy reference, the file, and `reduce` on a real collection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import make_variants
from lookalike import Collection
from lookalike.errors import CorruptCollectionError, UsageError
from lookalike.index import PCA
from lookalike.live import MainDeltaIndex
from test_cli import run

DIM = 8  # the sample collection holds 18 photos: a PCA cannot keep more dims than that


def _data(n: int, d: int = 48, seed: int = 0) -> np.ndarray:
    """Unit vectors with a decaying spectrum and an offset mean, like CNN embeddings."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(3.0, 0.1, d) + rng.standard_normal(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred data projected onto the top ``dim`` covariance eigenvectors, and the
    eigenvalues, the textbook way."""
    x = x.astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    top = np.argsort(values)[::-1][:dim]
    return (x - x.mean(axis=0)) @ vectors[:, top], values[top]


@pytest.mark.parametrize("n", [500, 30])  # more samples than dims (covariance), fewer (SVD)
def test_projection_matches_the_numpy_reference(n: int) -> None:
    x = _data(n)
    pca = PCA.fit(x, 12)
    projected, eigenvalues = _reference(x, 12)
    np.testing.assert_allclose(pca.eigenvalues, eigenvalues, rtol=1e-8)
    signs = np.sign(np.sum(projected * ((x - pca.mean) @ pca.components), axis=0))
    expected = projected * signs  # eigenvector signs are arbitrary
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    out = pca.apply(x)
    assert out.dtype == np.float32 and out.shape == (n, 12)
    np.testing.assert_allclose(out, expected, atol=2e-5)
    total = np.trace(np.cov(x.astype(np.float64), rowvar=False))
    assert pca.explained_variance_ratio == pytest.approx(eigenvalues.sum() / total, rel=1e-8)
    assert pca.in_dim == 48 and pca.dim == 12 and pca.trained_on == n and not pca.whiten


def test_whitening_makes_the_training_covariance_the_identity() -> None:
    x = _data(2000)
    pca = PCA.fit(x, 16, whiten=True, eps=0.0)
    raw = x @ pca.matrix - x.mean(axis=0) @ pca.matrix  # before re-normalising
    np.testing.assert_allclose(np.cov(raw, rowvar=False), np.eye(16), atol=1e-3)
    # The default eps keeps weak directions from being blown up past 1/sqrt(eps) of the top.
    damped = PCA.fit(x, 16, whiten=True)
    gains = np.linalg.norm(damped.matrix, axis=0)
    assert gains.max() / gains.min() <= 1 / np.sqrt(damped.eps) + 1e-6


def test_outputs_are_unit_vectors_and_a_refit_is_identical() -> None:
    x = _data(300)
    for whiten in (False, True):
        out = PCA.fit(x, 10, whiten=whiten).apply(x[:7])
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(PCA.fit(x, 10).apply(x), PCA.fit(x, 10).apply(x))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    x = _data(300)
    pca = PCA.fit(x, 10, whiten=True)
    pca.save(tmp_path / "pca.npz")
    loaded = PCA.load(tmp_path / "pca.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["pca.npz"]  # no temporary file left
    assert (loaded.in_dim, loaded.dim, loaded.whiten, loaded.trained_on) == (48, 10, True, 300)
    assert loaded.explained_variance_ratio == pca.explained_variance_ratio
    np.testing.assert_array_equal(loaded.apply(x), pca.apply(x))


def test_bad_requests_say_what_to_do(tmp_path: Path) -> None:
    x = _data(20)
    with pytest.raises(UsageError, match="between 1 and 47"):
        PCA.fit(x, 48)
    with pytest.raises(UsageError, match="between 1 and 47"):
        PCA.fit(x, 0)
    with pytest.raises(UsageError, match="at least 30 vectors"):
        PCA.fit(x, 30)
    with pytest.raises(UsageError, match="2-D"):
        PCA.fit(x[0], 4)
    with pytest.raises(UsageError, match="NaN"):
        PCA.fit(np.full((20, 48), np.nan, np.float32), 4)
    with pytest.raises(UsageError, match="maps 48-d vectors"):
        PCA.fit(x, 4).apply(np.zeros((1, 12), np.float32))
    (tmp_path / "bad.npz").write_bytes(b"not a PCA")
    with pytest.raises(CorruptCollectionError, match="lookalike reduce"):
        PCA.load(tmp_path / "bad.npz")


# -- a real collection ----------------------------------------------------------------------

def finds_itself(col: Collection, images: list[Path]) -> None:
    for image in images:
        assert col.search(image, k=1)[0].uri == str(image)


def test_reduce_keeps_every_path_working(
    col: Collection, sample_dir: Path, tmp_path: Path
) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    report = col.reduce(DIM)
    assert (report.dim_before, report.dim_after, report.vectors) == (1280, DIM, len(photos))
    assert report.trained_on == len(photos) and 0 < report.explained_variance < 1
    assert report.index_bytes_after < report.index_bytes_before / 50
    assert col.live.dim == DIM and col.info().index_dim == DIM
    finds_itself(col, photos)

    new = make_variants(sample_dir, tmp_path / "new", 3)
    col.add(new, workers=0, show_progress=False)  # into the delta, projected
    assert col.info().delta_vectors == 3
    finds_itself(col, new)
    similar = col.search_similar(col.find(new[0]), k=4)  # from the stored full vector
    assert len(similar) == 4 and col.find(new[0]) not in {h.image_id for h in similar}

    col.compact()
    assert col.verify().ok and col.info().main_vectors == len(photos) + 3
    reopened = Collection.open(col.path)
    assert reopened.info().pca["dim"] == DIM and reopened.live.dim == DIM
    finds_itself(reopened, new + photos[:3])
    assert reopened.index_vectors().shape == (len(photos) + 3, DIM)

    off = col.reduce(0)
    assert off.dim_after == 1280 and off.explained_variance is None
    assert "pca" not in json.loads((col.path / "manifest.json").read_text())
    assert not list(col.path.glob("pca-*.npz")) and col.verify().ok
    finds_itself(col, photos[:3])
    finds_itself(reopened, new[:1])  # the other handle follows


def test_other_handles_switch_to_a_new_projection(col: Collection, sample_dir: Path) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    reader = Collection.open(col.path)
    finds_itself(reader, photos[:2])
    assert reader.live.dim == 1280
    col.reduce(DIM)
    finds_itself(reader, photos[:2])
    assert reader.live.dim == DIM and not reader.live.projection.whiten
    col.reduce(DIM, whiten=True)  # the same dim, another projection: still told apart
    finds_itself(reader, photos[:2])
    assert reader.live.projection.whiten and reader.live.main_vectors == len(photos)


def test_an_interrupted_reduce_is_exact_meanwhile_and_finished_by_rebuild(
    col: Collection, sample_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = sorted(sample_dir.glob("*.jpg"))
    with monkeypatch.context() as patch:
        def crash(self: MainDeltaIndex) -> None:
            raise KeyboardInterrupt

        patch.setattr(MainDeltaIndex, "compact", crash)
        with pytest.raises(KeyboardInterrupt):
            col.reduce(DIM)
    report = col.verify()
    assert not report.ok and "reduce" in " ".join(report.problems)
    reader = Collection.open(col.path)  # the main.index on disk is the old 1280-d one
    finds_itself(reader, photos[:3])
    assert reader.live.dim == DIM and reader.live.main_vectors == 0  # exact, from the store
    col.rebuild()
    assert col.verify().ok
    finds_itself(reader, photos[:3])
    assert reader.live.main_vectors == len(photos)  # trusts the new main.index


def test_an_index_file_of_another_dimension_is_never_searched(col: Collection,
                                                             sample_dir: Path) -> None:
    old_main = (col.path / "main.index").read_bytes()  # 1280-d
    col.reduce(DIM)
    (col.path / "main.index").write_bytes(old_main)
    reader = Collection.open(col.path)
    finds_itself(reader, sorted(sample_dir.glob("*.jpg"))[:3])  # no Faiss assertion
    problems = " ".join(reader.verify().problems)
    assert "dimension 1280" in problems
    reader.rebuild()
    assert reader.verify().ok


def test_a_server_switches_without_a_restart(live_server, sample_dir: Path) -> None:
    coffee = (sample_dir / "coffee.jpg").read_bytes()
    with Collection.open(live_server.collection_path) as col:
        col.reduce(DIM, whiten=True)
    hit = httpx.post(f"{live_server.url}/search/visual?k=1", content=coffee).json()["results"][0]
    assert hit["uri"] == str(sample_dir / "coffee.jpg") and hit["score"] > 0.999
    similar = httpx.get(f"{live_server.url}/search/similar/1", params={"k": 3}).json()
    assert len(similar["results"]) == 3


def test_cli_reduce_info_and_off(sample_collection: Path, sample_dir: Path,
                                 tmp_path: Path) -> None:
    path = tmp_path / "col"
    shutil.copytree(sample_collection, path)
    report = json.loads(run("reduce", "--dim", DIM, "--whiten", "-c", path, "--json").stdout)
    assert report["dim_after"] == DIM and report["whiten"] and report["trained_on"] == 18
    assert f"1280 -> {DIM} dimensions, whitened" in run("info", "-c", path).stdout
    hits = json.loads(run("search", sample_dir / "coffee.jpg", "-c", path, "--json").stdout)
    assert len(hits["results"]) == 10
    assert "OK" in run("verify", "-c", path).stdout
    too_many = run("reduce", "--dim", 64, "-c", path, check=False)
    assert too_many.returncode == 2 and "at least 64 vectors" in too_many.stderr
    assert run("reduce", "-c", path, check=False).returncode == 2
    off = run("reduce", "--off", "-c", path).stdout
    assert "back to 1280 dimensions" in off
