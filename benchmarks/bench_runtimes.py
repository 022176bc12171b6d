"""EfficientNet-Lite0 inference speed by runtime: batch of 32 real photos, 2 threads.

Each runtime runs in a fresh interpreter on the same decoded batch (224x224 uint8 pixels of 32
photos from benchmarks/photos.py): PyTorch eager fp32 (NCHW), PyTorch eager with channels_last
weights and input, and lookalike's runtimes: PyTorch (``Embedder.load(runtime="torch")``), ONNX
Runtime, and OpenVINO in f32 and in bf16 (where the CPU computes bf16 natively). Reported: the
median time of a batch after warm-up, images/s, the largest absolute difference of the
L2-normalised 1280-d outputs from PyTorch eager, and their smallest cosine to it.

    python benchmarks/bench_runtimes.py                 # batch 32, 2 threads, 15 timed batches
    python benchmarks/bench_runtimes.py --repeats 5     # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from common import OUT, Meter, child_spec, log, machine, reply, run_child, table
from photos import ensure_photos

MODEL = "efficientnet-lite0"
RUNTIMES = {
    "eager": "PyTorch eager fp32 (NCHW)",
    "channels_last": "PyTorch eager fp32, channels_last",
    "lookalike-torch": 'lookalike Embedder, runtime="torch" (channels_last)',
    "onnxruntime": 'lookalike Embedder, runtime="onnxruntime"',
    "openvino-f32": 'lookalike Embedder, runtime="openvino", precision="f32"',
    "openvino-bf16": 'lookalike Embedder, runtime="openvino", precision="bf16"',
}


def _torch_runner(channels_last: bool, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    from lookalike.embedders import get_model_spec

    torch.set_num_threads(threads)
    spec = get_model_spec(MODEL)
    backbone = spec.build(None).eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    backbone = backbone.to(memory_format=layout)
    mean = torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocess.std).view(1, 3, 1, 1)

    def run(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
            x = ((x - mean) / std).contiguous(memory_format=layout)
            features = backbone(x).mean(dim=(2, 3))
            return torch.nn.functional.normalize(features, dim=1).numpy()

    return run


def time_runtime(spec: dict[str, Any]) -> dict[str, Any]:
    """Load one runtime, warm it up, then time ``repeats`` batches (child process)."""
    name, threads = spec["runtime"], spec["threads"]
    if name in ("eager", "channels_last"):
        run = _torch_runner(name == "channels_last", threads)
    else:
        from lookalike.embedders import Embedder

        runtime, _, precision = name.removeprefix("lookalike-").partition("-")
        embedder = Embedder.load(MODEL, runtime=runtime, precision=precision or "f32",
                                 threads=threads, cache_dir=os.environ.get("LOOKALIKE_CACHE_DIR"))
        run = embedder.embed_pixels
    pixels = np.load(spec["pixels"])
    for _ in range(3):
        outputs = run(pixels)
    seconds = []
    with Meter() as meter:
        for _ in range(spec["repeats"]):
            started = time.perf_counter()
            outputs = run(pixels)
            seconds.append(time.perf_counter() - started)
    np.save(spec["outputs"], outputs)
    return {"seconds": seconds, "other_cores": meter.other_cores}


def main() -> None:
    from lookalike.embedders import get_model_spec
    from lookalike.imaging import load_pixels

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="threads per runtime (default 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed batches (default 15)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    preprocess = get_model_spec(MODEL).preprocess
    photos = ensure_photos(2000)[:args.batch]
    pixels = np.stack([load_pixels(p, preprocess, max_pixels=1 << 30) for p in photos])
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        np.save(f"{tmp}/pixels.npy", pixels)
        from lookalike.embedders.backends import cpu_has_bf16

        for name in RUNTIMES:
            if name == "openvino-bf16" and not cpu_has_bf16():
                continue
            log(f"runtimes: {name}")
            results[name] = run_child(__file__, {
                "runtime": name, "threads": args.threads, "repeats": args.repeats,
                "pixels": f"{tmp}/pixels.npy", "outputs": f"{tmp}/{name}.npy",
            })
            results[name]["outputs"] = np.load(f"{tmp}/{name}.npy")

    reference = results["eager"]["outputs"]
    eager_ips = args.batch / float(np.median(results["eager"]["seconds"]))
    rows = []
    for name, label in RUNTIMES.items():
        if name not in results:
            continue
        seconds = results[name]["seconds"]
        median = float(np.median(seconds))
        outputs = results[name]["outputs"]
        diff = float(np.abs(outputs - reference).max())
        cosine = float((outputs * reference).sum(axis=1).min())
        rows.append([label, f"{1000 * median:.0f}", f"{1000 * min(seconds):.0f}",
                     f"{args.batch / median:.1f}", f"{args.batch / median / eager_ips:.2f}x",
                     "0 (reference)" if name == "eager" else f"{diff:.1e}", f"{cosine:.4f}",
                     f"{results[name]['other_cores']:.2f}"])
    print(f"## {MODEL} runtimes ({machine()})\n")
    print(f"Batch of {args.batch} real photos (224x224 uint8 in, L2-normalised 1280-d out), "
          f"{args.threads} threads, median of {args.repeats} batches after 3 warm-up batches, "
          "each runtime in a fresh process.\n")
    print(table(["runtime", "median ms/batch", "best ms/batch", "images/s", "vs eager",
                 "max abs diff vs eager", "min cosine to eager", "other load"], rows))
    print("\n'Other load': CPU that other processes on the machine used while a runtime was "
          "timed, in cores.")


if __name__ == "__main__":
    child = child_spec(sys.argv)
    if child is None:
        main()
    else:
        reply(time_runtime(child))
