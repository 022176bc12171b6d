"""Does bf16 inference change what lookalike finds? Copy detection with f32 vs bf16 embeddings.

Database: the benchmark photo set (default 2,000 real-photo JPEGs, benchmarks/photos.py).
Queries: seeded edited copies (the demo's crop, rotation, JPEG, colour, grey, text edits) of
``--queries`` database photos. Reports, per precision: images/s of the model alone, cosine of each
vector to its f32 counterpart, and recall@1 / recall@10 of the original for every edit; plus the
mixed case (database in bf16, queries in f32), which is what happens when a collection built on a
bf16 machine is searched from one without bf16.

    python benchmarks/bench_precision.py [--images 2000] [--queries 300]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import OUT, log, machine, table
from lookalike.demo import EDITS
from lookalike.embedders import Embedder
from lookalike.embedders.backends import cpu_has_bf16
from lookalike.imaging import load_pixels
from photos import ensure_photos


def _pixels(paths: list[Path], embedder: Embedder) -> np.ndarray:
    return np.stack([load_pixels(p, embedder.preprocess, max_pixels=10**9) for p in paths])


def _queries(originals: list[Path], folder: Path, seed: int) -> list[tuple[str, int, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for n, index in enumerate(rng.choice(len(originals), len(originals), replace=False)):
        edit = list(EDITS)[n % len(EDITS)]
        path = folder / f"q{n:04d}-{edit}.jpg"
        if not path.exists():
            function, quality = EDITS[edit]
            image = Image.open(originals[index]).convert("RGB")
            image.thumbnail((1024, 1024))
            function(image).save(path, quality=quality)
        out.append((edit, int(index), path))
    return out


def _embed(embedder: Embedder, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    embedder.embed_pixels(pixels[:32])  # warm-up
    start = time.perf_counter()
    vectors = np.concatenate([embedder.embed_pixels(pixels[i:i + 32])
                              for i in range(0, len(pixels), 32)])
    return vectors, len(pixels) / (time.perf_counter() - start)


def _recall(db: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int) -> float:
    top = np.argsort(-(queries @ db.T), axis=1)[:, :k]
    return float(np.mean([t in row for t, row in zip(truth, top, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    if not cpu_has_bf16():
        print("This CPU has no native bf16: lookalike uses f32 here, nothing to compare.")
        return
    photos = ensure_photos(args.images)
    queries = _queries(photos, OUT / f"precision-queries-{args.images}", seed=5)[:args.queries]
    f32 = Embedder.load("efficientnet-lite0", runtime="openvino", precision="f32", threads=2)
    bf16 = Embedder.load("efficientnet-lite0", runtime="openvino", precision="bf16", threads=2)
    log(f"decoding {len(photos)} photos and {len(queries)} queries")
    db_pixels = _pixels(photos, f32)
    q_pixels = _pixels([q for _, _, q in queries], f32)
    truth = np.array([i for _, i, _ in queries])
    edits = np.array([e for e, _, _ in queries])

    vectors, speed = {}, {}
    for name, embedder in (("f32", f32), ("bf16", bf16)):
        log(f"embedding with {embedder.runtime}")
        db, speed[name] = _embed(embedder, db_pixels)
        vectors[name] = (db, _embed(embedder, q_pixels)[0])
    cosine = (vectors["bf16"][0] * vectors["f32"][0]).sum(axis=1)

    rows = []
    for label, (db_name, q_name) in {"f32": ("f32", "f32"), "bf16": ("bf16", "bf16"),
                                     "db bf16, queries f32": ("bf16", "f32")}.items():
        db, q = vectors[db_name][0], vectors[q_name][1]
        cells = [label, f"{speed[db_name]:.0f}" if db_name == q_name else "-"]
        cells += [f"{_recall(db, q, truth, 1):.3f}", f"{_recall(db, q, truth, 10):.3f}"]
        cells += [f"{_recall(db, q[edits == e], truth[edits == e], 1):.2f}" for e in EDITS]
        rows.append(cells)
    print(f"## bf16 vs f32 inference, EfficientNet-Lite0 on OpenVINO ({machine()})\n")
    print(f"Database {len(photos):,} real photos; {len(queries)} edited-copy queries "
          f"({len(queries) // len(EDITS)} per edit). Cosine of bf16 to f32 database vectors: "
          f"mean {cosine.mean():.4f}, min {cosine.min():.4f}.\n")
    print(table(["embeddings", "images/s (model only, batch 32, 2 threads)", "recall@1",
                 "recall@10", *[f"R@1 {e}" for e in EDITS]], rows))


if __name__ == "__main__":
    main()
