"""Running a model: the exported ONNX graph on OpenVINO or ONNX Runtime (CPU), or PyTorch.

benchmarks/bench_runtimes.py measures the choices on this machine. The graph is exported once per
model and weights and cached on disk; later processes load it without touching torch.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, UsageError
from ..types import Preprocess
from .backends import Backend, OpenVinoBackend, OrtBackend, TorchBackend
from .registry import ModelSpec, get_model_spec

# Bump when EmbeddingGraph changes what it computes, so cached exports are redone. Pooling variants
# did not bump it: the default pooling's graph is unchanged and the others are named by their tag.
GRAPH_VERSION = 2
RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")
PRECISIONS = ("auto", "f32", "bf16")


class Embedder:
    """A model ready to embed: uint8 pixels in, L2-normalised float32 vectors out.

    >>> embedder = Embedder.load("efficientnet-lite0")
    >>> vectors = embedder.embed(pixel_arrays)  # (n, 1280) float32, unit norm
    """

    def __init__(self, spec: ModelSpec, backend: Backend, weights: str | None) -> None:
        self.spec = spec
        self.weights = weights
        self._backend = backend

    @classmethod
    def load(
        cls,
        name: str,
        *,
        weights: str | None = None,
        runtime: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> Embedder:
        """Load model ``name`` from the registry onto the fastest runtime for ``device``.

        On the CPU, ``runtime="auto"`` picks OpenVINO in bf16 where the CPU computes bf16
        natively (AVX512-BF16 or AMX) and ``precision`` allows it, else ONNX Runtime in f32 (the
        fastest f32 runtime measured here); PyTorch on CUDA. benchmarks/bench_runtimes.py and
        bench_precision.py measure the speed and the retrieval effect of each choice.
        """
        spec = get_model_spec(name)
        if runtime not in RUNTIMES:
            raise UsageError(f"Unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}.")
        if precision not in PRECISIONS:
            raise UsageError(
                f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}."
            )
        if device not in ("cpu", "cuda"):
            raise UsageError(f"Unknown device {device!r}; choose cpu or cuda.")
        if runtime == "auto":
            runtime = "torch" if device == "cuda" else _cpu_runtime(precision)
        if runtime != "torch" and device != "cpu":
            raise UsageError(f"The {runtime} runtime runs on the CPU; use --runtime torch.")
        if runtime == "openvino":
            from .backends import cpu_has_bf16

            if precision == "auto":
                precision = "bf16" if cpu_has_bf16() else "f32"
        elif precision == "bf16":
            raise UsageError("bf16 inference needs --runtime openvino; use --precision f32.")
        cache = Path(cache_dir) if cache_dir else None
        backend: Backend
        if runtime == "openvino":
            backend = OpenVinoBackend(_exported_graph(spec, weights, cache), threads, precision)
        elif runtime == "onnxruntime":
            backend = OrtBackend(_exported_graph(spec, weights, cache), threads)
        else:
            backend = TorchBackend(spec, weights, device, threads)
        return cls(spec, backend, weights)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def preprocess(self) -> Preprocess:
        return self.spec.preprocess

    @property
    def runtime(self) -> str:
        return self._backend.describe()

    @property
    def cpu_runtime(self) -> tuple[str, str]:
        """(runtime, precision) that rebuild this backend on another CPU machine (a Ray actor, a
        Spark worker), from :attr:`runtime` (``onnxruntime-cpu``, ``openvino-cpu-bf16``...)."""
        parts = self.runtime.split("-")
        if parts[0] == "openvino" and len(parts) == 3:
            return "openvino", parts[2]
        if parts[0] in ("onnxruntime", "torch"):
            return parts[0], "f32"
        return "auto", "auto"

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed one batch of (n, size, size, 3) uint8 pixels; returns (n, dim) float32."""
        size = self.preprocess.size
        if pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3) or pixels.dtype != np.uint8:
            raise UsageError(
                f"{self.name} takes (n, {size}, {size}, 3) uint8 pixels, got "
                f"{pixels.shape} {pixels.dtype}; decode images with lookalike.imaging first."
            )
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        vectors = np.asarray(self._backend.run(np.ascontiguousarray(pixels)), dtype=np.float32)
        return _renormalise(vectors)

    def embed(
        self,
        images: Iterable[np.ndarray],
        *,
        batch_size: int = 32,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Embed any number of decoded images in batches; returns (n, dim) float32, unit norm."""
        from tqdm import tqdm

        items = list(images)
        out = np.zeros((len(items), self.dim), np.float32)
        disable = None if show_progress is None else not show_progress  # None: only on a TTY
        with tqdm(total=len(items), unit="img", disable=disable) as bar:
            for start in range(0, len(items), batch_size):
                chunk = np.stack(items[start:start + batch_size])
                out[start:start + len(chunk)] = self.embed_pixels(chunk)
                bar.update(len(chunk))
        return out


def embedding_fingerprint(spec: ModelSpec, weights: str | None) -> str:
    """Names everything that decides a vector: model, weights, graph version and pooling. Vectors
    with different fingerprints are not comparable, so a collection records the one that built it.
    The default pooling adds nothing, so fingerprints recorded before pooling variants still match.
    """
    base = f"{spec.name}:{spec.weights_id(weights)}:graph{GRAPH_VERSION}"
    return f"{base}:{spec.pooling.tag}" if spec.pooling.tag else base


def _renormalise(vectors: np.ndarray) -> np.ndarray:
    # The graph normalises already; this guards reduced-precision runtimes and all-zero inputs.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _cpu_runtime(precision: str) -> str:
    import importlib.util

    def installed(name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    if precision != "f32" and installed("openvino"):
        from .backends import cpu_has_bf16

        if cpu_has_bf16() or precision == "bf16":
            return "openvino"
    for runtime in ("onnxruntime", "openvino"):
        if installed(runtime):
            return runtime
    return "torch"


def _exported_graph(spec: ModelSpec, weights: str | None, cache_dir: Path | None) -> Path:
    """The cached ONNX export of ``spec`` with ``weights``, exporting it first if needed."""
    if cache_dir is None:
        from ..settings import resolve

        cache_dir = Path(resolve("cache_dir"))
    tag = f"-{spec.pooling.tag}" if spec.pooling.tag else ""
    key = re.sub(r"[^A-Za-z0-9.+-]", "_", f"{spec.name}-{spec.weights_id(weights)}{tag}")
    path = cache_dir / "models" / f"{key}-g{GRAPH_VERSION}.onnx"
    if path.is_file():
        return path
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "torch", f"Exporting {spec.name} for ONNX Runtime", "pip install torch==2.13.0"
        ) from None
    from .nets import EmbeddingGraph

    path.parent.mkdir(parents=True, exist_ok=True)
    graph = EmbeddingGraph(spec.build(weights), spec.preprocess, spec.pooling).eval()
    size = spec.preprocess.size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (example,), str(tmp), input_names=["pixels"], output_names=["embedding"],
            dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path


def describe_models() -> list[dict[str, Any]]:
    """Name, dimension, input size, pooling, compute relative to one plain pass, and description
    of every registered model."""
    from .registry import model_names

    return [
        {"name": s.name, "dim": s.dim, "size": s.preprocess.size,
         "pooling": s.pooling.method, "scales": list(s.pooling.scales),
         "relative_cost": s.pooling.relative_cost,
         "description": f"{s.description}; {s.pooling.describe()}"}
        for s in map(get_model_spec, model_names())
    ]
