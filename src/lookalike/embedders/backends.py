"""Inference backends behind one interface: uint8 NHWC pixels in, float32 embeddings out.

OpenVINO and ONNX Runtime run the exported ONNX graph on the CPU; PyTorch runs the same graph on
CUDA (or on the CPU as a fallback). Only this module imports an inference runtime.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import UsageError
from .registry import ModelSpec

if TYPE_CHECKING:
    import openvino as ov


class Backend(Protocol):
    def run(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) uint8 pixels -> (n, dim) float32 embeddings."""
        ...

    def describe(self) -> str:
        """The runtime in a few words, e.g. ``openvino-cpu-bf16``."""
        ...


class OrtBackend(Backend):
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would steal the cores that decoding workers need between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def run(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: pixels})[0]

    def describe(self) -> str:
        return "onnxruntime-cpu"


class TorchBackend(Backend):
    def __init__(self, spec: ModelSpec, weights: str | None, device: str, threads: int | None):
        import torch

        from .nets import EmbeddingGraph

        if device == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                "--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu."
            )
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._device = torch.device(device)
        graph = EmbeddingGraph(spec.build(weights), spec.preprocess, spec.pooling)
        graph = graph.eval().to(self._device)
        # Module.to takes memory_format, but torch's overloads for it do not list it.
        self._graph = graph.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def run(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = torch.from_numpy(pixels).to(self._device, non_blocking=True)
            return self._graph(batch).float().cpu().numpy()

    def describe(self) -> str:
        return f"torch-{self._device.type}"


class OpenVinoBackend(Backend):
    """OpenVINO on the CPU, in f32 or bf16 (bf16 only where the CPU computes it natively)."""

    def __init__(self, path: Path, threads: int | None, precision: str) -> None:
        import openvino as ov

        core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16(core):
            raise UsageError("This CPU has no native bf16; use --precision f32.")
        config = {
            "INFERENCE_PRECISION_HINT": precision,  # always explicit: OpenVINO may pick bf16 itself
            "ENABLE_CPU_PINNING": False,  # pinned threads of two processes can share one core
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._precision = precision
        self._local = threading.local()  # an infer request serves one call at a time

    def run(self, pixels: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request.infer({0: pixels})[0].copy()

    def describe(self) -> str:
        return f"openvino-cpu-{self._precision}"


def cpu_has_bf16(core: ov.Core | None = None) -> bool:
    """Whether OpenVINO can compute in bf16 natively here (AVX512-BF16 or AMX)."""
    import openvino as ov

    core = core or ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
