"""bench_quality's embeddings: decoded model input and vectors, cached per model under
benchmarks/out/quality so that PCA/αQE/DBA rows and reruns never decode or embed again.

A file is known by (path, size, mtime): a rebuilt evaluation set gets new vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common import OUT, Meter, log
from lookalike.embedders import Embedder, embedding_fingerprint
from lookalike.evaluation import Embedded
from lookalike.imaging import decode_file, load_pixels
from lookalike.types import Preprocess

CACHE = OUT / "quality"


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def model_input(preprocess: Preprocess, paths: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Decoded model input of every path (one .npy per input geometry, made once; models with
    the same input size share it) and each path's decoding error ("" when it decoded)."""
    digest = hashlib.blake2b("\n".join(map(_key, paths)).encode(), digest_size=8).hexdigest()
    stem = CACHE / f"pixels-{preprocess.size}-{preprocess.resize}-{digest}"
    if not stem.with_suffix(".json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        size = preprocess.size
        pixels = np.lib.format.open_memmap(stem.with_suffix(".tmp.npy"), "w+", np.uint8,
                                           (len(paths), size, size, 3))
        errors = []
        log(f"decoding {len(paths)} images at {size} px")
        with ThreadPoolExecutor(2) as pool:
            for i, done in enumerate(pool.map(
                    lambda p: decode_file(str(p), preprocess, 1 << 28), paths)):
                if done.pixels is not None:
                    pixels[i] = done.pixels
                errors.append("" if done.pixels is not None else done.error or "failed")
        pixels.flush()
        del pixels
        os.replace(stem.with_suffix(".tmp.npy"), stem.with_suffix(".npy"))
        stem.with_suffix(".json").write_text(json.dumps(errors))
    errors = json.loads(stem.with_suffix(".json").read_text())
    return np.load(stem.with_suffix(".npy"), mmap_mode="r"), errors


class VectorCache:
    """Vectors of one model keyed by (path, size, mtime), in one .npz file."""

    def __init__(self, embedder: Embedder) -> None:
        key = embedding_fingerprint(embedder.spec, embedder.weights)
        if "bf16" in embedder.runtime:  # bf16 vectors are compatible, not equal: kept apart
            key += "-bf16"
        self.path = CACHE / f"{key.replace('/', '_').replace(':', '_')}.npz"
        self.embedder = embedder
        self.rows: dict[str, int] = {}
        self.vectors = np.zeros((0, embedder.dim), np.float32)
        self.ok = np.zeros(0, bool)
        self.errors: list[str] = []
        self.info: dict = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                self.rows = {k: i for i, k in enumerate(data["keys"].tolist())}
                self.vectors, self.ok = data["vectors"], data["ok"]
                self.errors = data["errors"].tolist()
                self.info = json.loads(str(data["info"]))

    def fill(self, paths: list[Path]) -> None:
        """Embed the paths not cached yet, from :func:`model_input`'s decoded pixels."""
        keys = [_key(p) for p in paths]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if not missing:
            return
        pixels, errors = model_input(self.embedder.preprocess, paths)
        vectors = np.zeros((len(missing), self.embedder.dim), np.float32)
        good = [j for j, i in enumerate(missing) if not errors[i]]
        log(f"{self.embedder.name}: embedding {len(good)} images")
        for start in range(0, len(good), 32):
            batch = good[start:start + 32]
            vectors[batch] = self.embedder.embed_pixels(pixels[[missing[j] for j in batch]])
            if start % 1024 == 0 and start:
                log(f"{self.embedder.name}: {start}/{len(good)}")
        first = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, vectors])
        self.ok = np.concatenate([self.ok, [not errors[i] for i in missing]])
        self.errors += [errors[i] for i in missing]
        self.rows.update({keys[i]: first + j for j, i in enumerate(missing)})
        self.save()

    def embedded(self, paths: list[Path]) -> Embedded:
        rows = np.asarray([self.rows[_key(p)] for p in paths], np.int64)
        failed = [(str(p), self.errors[r]) for p, r in zip(paths, rows, strict=True)
                  if not self.ok[r]]
        return Embedded(self.vectors[rows], self.ok[rows], failed, 0.0, 0.0)

    def save(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.rows, key=self.rows.__getitem__)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=np.asarray(keys), vectors=self.vectors, ok=self.ok,
                 errors=np.asarray(self.errors), info=json.dumps(self.info))
        os.replace(tmp, self.path)


def throughput(embedder: Embedder, paths: list[Path]) -> tuple[float, float]:
    """(images/s of the model alone at batch 32, other processes' load in cores)."""
    pixels = np.stack([load_pixels(p, embedder.preprocess, max_pixels=1 << 28) for p in paths])
    embedder.embed_pixels(pixels[:32])  # warm-up
    with Meter() as meter:
        start = time.perf_counter()
        for i in range(0, len(pixels), 32):
            embedder.embed_pixels(pixels[i:i + 32])
        seconds = time.perf_counter() - start
    return len(pixels) / seconds, meter.other_cores
