"""Embedder contract: every registered model, real weights, real runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_variants
from lookalike import Collection
from lookalike.embedders import Embedder, get_model_spec, model_names
from lookalike.embedders.backends import cpu_has_bf16
from lookalike.embedders.nets import ResNet50
from lookalike.errors import UnknownNameError, UsageError, WeightsError
from lookalike.imaging import load_pixels

PACKAGED = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


def _pixels(paths: list[Path], embedder: Embedder) -> np.ndarray:
    return np.stack([load_pixels(p, embedder.preprocess, max_pixels=10**8) for p in paths])


def test_registry_lists_models_and_suggests_close_names() -> None:
    assert set(PACKAGED + ["resnet50"]) <= set(model_names())
    with pytest.raises(UnknownNameError, match="Did you mean .*'efficientnet-lite0'") as info:
        get_model_spec("efficientnet-lite")
    assert "resnet50" in str(info.value)


CPU_RUNTIMES = [("openvino", "f32"), ("openvino", "auto"), ("onnxruntime", "f32")]


@pytest.mark.parametrize("name", PACKAGED)
@pytest.mark.parametrize(("runtime", "precision"), CPU_RUNTIMES)
def test_packaged_model_contract(name: str, runtime: str, precision: str,
                                 sample_dir: Path) -> None:
    embedder = Embedder.load(name, runtime=runtime, precision=precision)
    assert embedder.runtime.startswith(f"{runtime}-cpu")
    exact = embedder.runtime.endswith(("f32", "onnxruntime-cpu"))
    spec = get_model_spec(name)
    assert embedder.preprocess.size == {"efficientnet-lite0": 224, "efficientnet-lite1": 240,
                                        "efficientnet-lite2": 260}[name]
    pixels = _pixels(sorted(sample_dir.glob("*.jpg"))[:5], embedder)
    vectors = embedder.embed_pixels(pixels)
    assert vectors.shape == (5, spec.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors, embedder.embed_pixels(pixels))  # deterministic
    alone = embedder.embed_pixels(pixels[2:3])[0]  # batch composition does not matter
    np.testing.assert_allclose(alone, vectors[2], atol=1e-5 if exact else 2e-3)
    # Different photos give clearly different vectors.
    assert float(vectors[0] @ vectors[1]) < 0.9


def test_cpu_runtimes_agree_with_pytorch(sample_dir: Path) -> None:
    eager = Embedder.load("efficientnet-lite0", runtime="torch")
    pixels = _pixels(sorted(sample_dir.glob("*.jpg")), eager)
    reference = eager.embed_pixels(pixels)
    for runtime in ("onnxruntime", "openvino"):
        f32 = Embedder.load("efficientnet-lite0", runtime=runtime, precision="f32")
        np.testing.assert_allclose(f32.embed_pixels(pixels), reference, atol=1e-4)
    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16")
    bf16 = Embedder.load("efficientnet-lite0", runtime="openvino", precision="bf16")
    cosines = (bf16.embed_pixels(pixels) * reference).sum(axis=1)
    assert cosines.min() > 0.99  # measured here: mean 0.9986, min 0.994 on real photos


def test_precision_errors() -> None:
    with pytest.raises(UsageError, match="needs --runtime openvino"):
        Embedder.load("efficientnet-lite0", runtime="onnxruntime", precision="bf16")
    with pytest.raises(UsageError, match="Unknown precision"):
        Embedder.load("efficientnet-lite0", precision="int4")
    if not cpu_has_bf16():
        with pytest.raises(UsageError, match="no native bf16"):
            Embedder.load("efficientnet-lite0", runtime="openvino", precision="bf16")


@pytest.mark.parametrize(("runtime", "precision"), [*CPU_RUNTIMES, ("torch", "auto")])
def test_the_test_model_keeps_the_contract_and_tells_photos_apart(
        runtime: str, precision: str, sample_dir: Path, tmp_path: Path) -> None:
    # test-tiny stands in for the real model where a test needs vectors of real photos but not
    # good ones: it must be an Embedder like any other and give every photo itself first.
    embedder = Embedder.load(TINY, runtime=runtime, precision=precision)
    photos = sorted(sample_dir.glob("*.jpg")) + make_variants(sample_dir, tmp_path, 24)
    pixels = _pixels(photos, embedder)
    vectors = embedder.embed_pixels(pixels)
    assert vectors.shape == (len(photos), 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors, embedder.embed_pixels(pixels))  # deterministic
    alone = np.concatenate([embedder.embed_pixels(p[None]) for p in pixels])
    cosines = alone @ vectors.T  # a query embedded alone against an index embedded in a batch
    assert (cosines.argmax(axis=1) == np.arange(len(photos))).all()
    np.fill_diagonal(cosines, -1.0)
    assert cosines.max() < 0.95  # the closest pair: two crops of one photo, measured 0.925


def test_a_test_model_collection_records_it_like_any_model(sample_dir: Path,
                                                           tmp_path: Path) -> None:
    with Collection.create(tmp_path / "col", model=TINY) as col:
        col.index([sample_dir], workers=0, show_progress=False)
    with Collection.open(tmp_path / "col") as col:
        assert col.info().model == TINY and col.dim == 64
        photo = sorted(sample_dir.glob("*.jpg"))[5]
        assert col.search(photo, k=1)[0].uri == str(photo)
    manifest = (tmp_path / "col" / "manifest.json").read_text()
    assert f'"fingerprint": "{TINY}:rff-seed0:graph' in manifest


def test_preprocessing_is_the_models(embedder: Embedder) -> None:
    # EfficientNet-Lite was trained on (x - 127) / 128: a mid-grey image is ~zero input, so two
    # grey levels either side of 127 must give different embeddings, and the same level the same.
    grey = np.full((2, 224, 224, 3), 127, np.uint8)
    grey[1] = 200
    vectors = embedder.embed_pixels(grey)
    assert float(vectors[0] @ vectors[1]) < 0.999
    assert get_model_spec("efficientnet-lite0").preprocess.mean == (127.0, 127.0, 127.0)
    assert get_model_spec("resnet50").preprocess.std[0] == pytest.approx(0.229 * 255)


def test_embed_rejects_wrong_pixels(embedder: Embedder) -> None:
    with pytest.raises(UsageError, match=r"\(n, 224, 224, 3\) uint8"):
        embedder.embed_pixels(np.zeros((1, 100, 100, 3), np.uint8))
    assert embedder.embed_pixels(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 1280)


def test_embed_batches_any_number(tiny_embedder: Embedder, sample_dir: Path) -> None:
    pixels = list(_pixels(sorted(sample_dir.glob("*.jpg"))[:5], tiny_embedder))
    batched = tiny_embedder.embed(pixels, batch_size=2, show_progress=False)
    np.testing.assert_allclose(batched, tiny_embedder.embed_pixels(np.stack(pixels)), atol=1e-5)


def _resnet_weights(tmp_path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = ResNet50()
    for module in net.modules():  # non-trivial BN statistics, so loading them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


def test_resnet50_loads_torchvision_and_timm_style_files(tmp_path: Path, sample_dir: Path) -> None:
    state = _resnet_weights(tmp_path)
    plain = tmp_path / "resnet50-torchvision.pth"
    torch.save(state, plain)
    wrapped = tmp_path / "resnet50-checkpoint.pth"  # Lightning/DDP style container
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    no_counters = tmp_path / "resnet50-timm.pth"  # timm files omit BN step counters
    torch.save({k: v for k, v in state.items() if "num_batches_tracked" not in k}, no_counters)

    first = Embedder.load("resnet50", weights=str(plain), runtime="torch")
    pixels = _pixels(sorted(sample_dir.glob("*.jpg"))[:3], first)
    vectors = first.embed_pixels(pixels)
    assert vectors.shape == (3, 2048)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for other in (wrapped, no_counters):
        again = Embedder.load("resnet50", weights=str(other), runtime="torch").embed_pixels(pixels)
        np.testing.assert_allclose(again, vectors, atol=1e-6)
    exported = Embedder.load("resnet50", weights=str(plain), runtime="onnxruntime")
    np.testing.assert_allclose(exported.embed_pixels(pixels), vectors, atol=1e-4)
    openvino = Embedder.load("resnet50", weights=str(plain), runtime="openvino", precision="f32")
    assert (openvino.embed_pixels(pixels) * vectors).sum(axis=1).min() > 0.9999


def test_resnet50_weight_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        Embedder.load("resnet50", weights=str(tmp_path / "missing.pth"), runtime="torch")
    wrong = tmp_path / "not-resnet.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(WeightsError, match="not a ResNet-50 state dict"):
        Embedder.load("resnet50", weights=str(wrong), runtime="torch")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(WeightsError, match="Cannot read"):
        Embedder.load("resnet50", weights=str(garbage), runtime="torch")

    def offline(*args: object, **kwargs: object) -> None:  # the network cannot be reached here
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match="--weights PATH"):
        Embedder.load("resnet50", runtime="torch")


def test_runtime_and_device_errors() -> None:
    with pytest.raises(UsageError, match="Unknown runtime"):
        Embedder.load("efficientnet-lite0", runtime="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            Embedder.load("efficientnet-lite0", device="cuda")


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_weights_and_preprocessing_classify_photos(name: str, sample_dir: Path) -> None:
    # The backbone with its ImageNet classifier must recognise the sample photos: this catches
    # wrong weights, wrong mean/std, wrong activations (swish instead of ReLU6) or a bad decode.
    spec = get_model_spec(name)
    net = spec.build(None).net
    expected = {  # ImageNet classes: cats; espresso, cup; missile, projectile, space shuttle
        "chelsea": range(281, 286), "coffee": (967, 968), "rocket": (657, 744, 812),
    }
    for photo, classes in expected.items():
        pixels = load_pixels(sample_dir / f"{photo}.jpg", spec.preprocess, max_pixels=10**8)
        x = (torch.from_numpy(pixels.copy()[None]).permute(0, 3, 1, 2).float() - 127) / 128
        with torch.no_grad():
            top3 = net(x).topk(3).indices[0].tolist()
        assert set(top3) & set(classes), (photo, top3)
