"""What `lookalike reduce` (PCA) does to memory, speed and quality: copy detection in real photos.

Database: the benchmark photo set (default 2,000 real-photo JPEGs, benchmarks/photos.py), indexed
once into benchmarks/out/pca-N with the default model. Queries: seeded edited copies (the demo's
crop, rotation, JPEG, colour, grey and text edits) of ``--queries`` database photos, embedded once.
Each setting (full 1280-d, then each PCA) gets its own copy of the collection, reduced with
`Collection.reduce` (the code behind `lookalike reduce`); every query is searched through
`col.search_vector` for recall@1 / recall@10 of the original. Latency is timed interleaved (each
query against every setting in turn, so a busy machine slows all alike): the index alone
(projection + Faiss, `live.search`) and with the SQLite rows (`col.search_vector`).

``--scale N`` adds the index alone at N vectors, Flat and HNSW32: synthetic vectors drawn from a
Gaussian with the real vectors' mean and covariance (so PCA sees a realistic spectrum), projected
by each setting's PCA, searched with the projected queries.

    python benchmarks/bench_pca.py [--images 2000] [--queries 200] [--configs 512,512w,256,256w,128]
                                   [--scale 100000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import OUT, Meter, log, machine, percentile_ms, table
from lookalike import Collection
from lookalike.demo import EDITS
from lookalike.index import FaissIndex, parse_spec
from photos import ensure_photos


def _queries(originals: list[Path], count: int, folder: Path,
             seed: int) -> list[tuple[str, Path, Path]]:
    """(edit, original, copy) for ``count`` originals drawn at random, edits in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for n, index in enumerate(rng.choice(len(originals), count, replace=False)):
        edit = list(EDITS)[n % len(EDITS)]
        path = folder / f"q{n:04d}-{edit}.jpg"
        if not path.exists():
            function, quality = EDITS[edit]
            image = Image.open(originals[index]).convert("RGB")
            image.thumbnail((1024, 1024))
            function(image).save(path, quality=quality)
        out.append((edit, originals[index], path))
    return out


def _label(config: str) -> str:
    if config == "full":
        return "1280 (no PCA)"
    return f"PCA {config.rstrip('w')}" + (" whitened" if config.endswith("w") else "")


def _timed(function, *args, **kwargs) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def _ms(seconds: list[float]) -> str:
    return f"{percentile_ms(seconds, 50):.3f} / {percentile_ms(seconds, 99):.3f}"


def _scale(cols: dict[str, Collection], vectors: np.ndarray, n: int) -> list[list[str]]:
    """Bare index search at ``n`` synthetic vectors, Flat and HNSW32, for every setting."""
    real = np.concatenate([v for _, v in next(iter(cols.values())).store.iter_vectors()])
    rng = np.random.default_rng(3)
    mean, cov = real.mean(axis=0), np.cov(real, rowvar=False)
    base = rng.multivariate_normal(mean, cov, size=n, method="eigh").astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    rows = []
    for kind in ("Flat", "HNSW32"):
        indexes, queries, built = {}, {}, {}
        for config, col in cols.items():
            live = col.live
            log(f"scale: building {kind} over {n:,} vectors for {config}")
            started = time.perf_counter()
            indexes[config] = FaissIndex.build(parse_spec(kind), live.dim, ids, live.project(base))
            built[config] = time.perf_counter() - started
            queries[config] = live.project(vectors)
        times: dict[str, list[float]] = {c: [] for c in cols}
        for q in range(len(vectors)):
            for config, index in indexes.items():
                times[config].append(_timed(index.search, queries[config][q:q + 1], 10))
        rows += [[f"{kind}, {n:,} vectors", _label(c), f"{built[c]:.1f}",
                  f"{n * indexes[c].dim * 4 / 1e6:,.0f}", _ms(times[c])] for c in cols]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--configs", default="512,512w,256,256w,128",
                        help="PCA settings after the full-dimension baseline; 'w' whitens.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed passes over the queries.")
    parser.add_argument("--scale", type=int, default=0,
                        help="Also time the bare index at this many synthetic vectors.")
    args = parser.parse_args()

    photos = ensure_photos(args.images)
    base = OUT / f"pca-{args.images}"
    with Collection.open_or_create(base) as col:
        log(f"indexing {len(photos)} photos into {base} (skipped when done before)")
        col.index(photos, show_progress=False)
        col.reduce(0)
        queries = _queries(photos, args.queries, OUT / f"pca-queries-{args.images}", seed=11)
        log(f"embedding {len(queries)} edited copies")
        vectors = np.concatenate([col.embed([q for _, _, q in queries[i:i + 32]])
                                  for i in range(0, len(queries), 32)])
        truth = [col.find(original) for _, original, _ in queries]
    edits = np.array([e for e, _, _ in queries])

    cols, reports = {}, {}
    for config in ["full", *args.configs.split(",")]:
        folder = OUT / f"pca-{args.images}-runs" / config
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        cols[config] = Collection.open(folder)
        dim = 0 if config == "full" else int(config.rstrip("w"))
        log(f"reducing a copy to {_label(config)}")
        reports[config] = cols[config].reduce(dim, whiten=config.endswith("w"))

    index_s: dict[str, list[float]] = {c: [] for c in cols}
    vector_s: dict[str, list[float]] = {c: [] for c in cols}
    hits = {c: [[h.image_id for h in col.search_vector(v, 10)] for v in vectors]
            for c, col in cols.items()}
    with Meter() as meter:
        for _ in range(args.rounds):
            for v in vectors:
                for config, col in cols.items():
                    index_s[config].append(_timed(col.live.search, v[None], 10))
                    vector_s[config].append(_timed(col.search_vector, v, 10))

    rows = []
    for config, col in cols.items():
        report, found = reports[config], hits[config]
        first = np.array([h[0] == t for h, t in zip(found, truth, strict=True)])
        top10 = np.array([t in h for h, t in zip(found, truth, strict=True)])
        main_bytes = (col.path / "main.index").stat().st_size
        variance = f"{report.explained_variance:.1%}" if report.explained_variance else "-"
        rows.append([
            _label(config), variance, f"{report.fit_seconds:.1f}",
            f"{main_bytes / col.live.main_vectors:,.0f}", _ms(index_s[config]),
            _ms(vector_s[config]), f"{first.mean():.3f}", f"{top10.mean():.3f}",
            *[f"{first[edits == e].mean():.2f}" for e in EDITS],
        ])
    kind = next(iter(cols.values())).live.main_kind
    print(f"## PCA (`lookalike reduce`) on {len(photos):,} real photos ({machine()})\n")
    print(f"{len(queries)} edited-copy queries ({len(queries) // len(EDITS)} per edit), k = 10, "
          f"main index {kind}; each PCA learnt from all {len(photos):,} stored vectors. "
          f"Latency p50 / p99 over {args.rounds} interleaved passes; other load during the "
          f"timing: {meter.other_cores:.1f} cores of {os.cpu_count()}.\n")
    print(table(["index vectors", "variance kept", "PCA fit s", "main.index bytes / vector",
                 "index search ms", "search_vector ms", "recall@1", "recall@10",
                 *[f"R@1 {e}" for e in EDITS]], rows))
    if args.scale:
        print(f"\n### The index alone at {args.scale:,} vectors (synthetic, see the docstring)\n")
        print(table(["index", "vectors", "build s", "vector data MB", "search ms p50 / p99"],
                    _scale(cols, vectors, args.scale)))
    for col in cols.values():
        col.close()


if __name__ == "__main__":
    main()
