"""Query latency: one photo in, k look-alikes out, with 10,000 and 100,000 vectors indexed.

For each index size a collection is built once (cached under benchmarks/out/query-N) with the
default index spec ("auto": exact Flat below 20,000 vectors, HNSW32 above). It holds the real
embeddings of the query photos (so each query's first hit must be itself) and synthetic random
unit vectors for the rest, each vector a real row of the SQLite store, and the Faiss index is built
from the store by ``Collection.rebuild`` as an indexing run would. Then, in a fresh
process, every query photo (>= 1 MP JPEGs from benchmarks/photos.py) is searched with
``col.search(path, k)`` (decode + embed + search + metadata rows), and its parts are timed on
their own: decoding, embedding, ``search_vector`` (index + rows) and the bare Faiss search.

    python benchmarks/bench_query.py                          # 10k and 100k vectors
    python benchmarks/bench_query.py --sizes 10000 --rounds 3   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import OUT, Meter, child_spec, log, machine, percentile_ms, reply, run_child, table
from lookalike.settings import DEFAULT_MODEL
from photos import ensure_photos

MODEL = DEFAULT_MODEL
SYNTHETIC_SEED = 1234
WRITE_CHUNK = 10_000


# Timed stages of a query, in the order they are measured, and their names in the table.
STAGE_NAMES = {
    "search": "**end to end: `col.search(path)`**",
    "decode": "decode (`load_pixels`)",
    "embed": "embed (`embed_pixels`, batch of 1)",
    "vector": "search only: `col.search_vector` (index + SQLite rows, αQE(2): two searches)",
    "vector0": "search only: `col.search_vector(qe=0)` (one search, no query expansion)",
    "index": "search only: Faiss index search",
    "index1": "search only: Faiss index search, 1 OpenMP thread",
}


def collection_dir(size: int) -> Path:
    return OUT / f"query-{size}"


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """Create the collection of ``spec["size"]`` vectors, unless a matching one is cached."""
    from lookalike import Collection
    from lookalike.embedders import embedding_fingerprint, get_model_spec
    from lookalike.storage import NewImage

    folder = collection_dir(spec["size"])
    recipe = {"size": spec["size"], "queries": spec["queries"], "seed": SYNTHETIC_SEED,
              "model": embedding_fingerprint(get_model_spec(MODEL), None)}
    marker = folder / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()).get("recipe") == recipe:
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    col = Collection.create(folder, model=MODEL, index="auto")
    with col.writer():
        log(f"query: embedding {len(spec['queries'])} query photos")
        rows = []
        for path, vector in zip(spec["queries"], col.embed(spec["queries"]), strict=True):
            st = os.stat(path)
            rows.append(NewImage(uri=os.path.abspath(path), size=st.st_size,
                                 mtime_ns=st.st_mtime_ns, content_hash=None, vector=vector))
        col.store.write(rows)
        rng = np.random.default_rng(SYNTHETIC_SEED)
        n_synthetic = spec["size"] - len(rows)
        for start in range(0, n_synthetic, WRITE_CHUNK):
            n = min(WRITE_CHUNK, n_synthetic - start)
            vectors = rng.standard_normal((n, col.dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            col.store.write(
                NewImage(uri=f"/synthetic/photo-{start + i:07d}.jpg", size=None, mtime_ns=None,
                         content_hash=None, width=640, height=480, vector=v)
                for i, v in enumerate(vectors)
            )
        rows_done = time.perf_counter()
        log(f"query: {spec['size']:,} rows written; building the index")
        col.rebuild()  # the index an indexing run builds for this many vectors
    result = {"recipe": recipe, "rows_seconds": rows_done - started,
              "index_seconds": time.perf_counter() - rows_done,
              "index_kind": col.live.main_kind,
              "index_mib": (folder / "main.index").stat().st_size / 2**20}
    col.close()
    marker.write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time searches in this fresh process: the first (cold) one, then warm ones by stage."""
    import faiss

    from lookalike import Collection
    from lookalike.imaging import load_pixels

    queries, k = spec["queries"], spec["k"]
    started = time.perf_counter()
    col = Collection.open(collection_dir(spec["size"]))
    first = col.search(queries[0], k)
    cold = time.perf_counter() - started
    assert len(first) == k, f"expected {k} hits, got {len(first)}"

    embedder, index = col.embedder, col.live
    for path in queries[:5]:  # warm-up
        col.search(path, k)
    times: dict[str, list[float]] = {s: [] for s in STAGE_NAMES}
    omp_threads = faiss.omp_get_max_threads()
    self_hits = 0
    with Meter() as meter:
        for path in queries * spec["rounds"]:
            t0 = time.perf_counter()
            hits = col.search(path, k)
            t1 = time.perf_counter()
            pixels = load_pixels(path, embedder.preprocess, max_pixels=col.max_pixels)
            t2 = time.perf_counter()
            vector = embedder.embed_pixels(pixels[None])[0]
            t3 = time.perf_counter()
            col.search_vector(vector, k)
            t4 = time.perf_counter()
            col.search_vector(vector, k, qe=0)
            t4b = time.perf_counter()
            index.search(vector[None], k, ef_search=64)
            t5 = time.perf_counter()
            faiss.omp_set_num_threads(1)
            t6 = time.perf_counter()
            index.search(vector[None], k, ef_search=64)
            t7 = time.perf_counter()
            faiss.omp_set_num_threads(omp_threads)
            laps = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4b - t4, t5 - t4b, t7 - t6)
            for name, seconds in zip(times, laps, strict=True):
                times[name].append(seconds)
            self_hits += hits[0].uri == os.path.abspath(path)
    col.close()
    return {"cold": cold, "times": times, "self_hits": self_hits,
            "other_cores": meter.other_cores,
            "searches": spec["rounds"] * len(queries),
            "ntotal": index.main_vectors + index.delta_vectors,
            "index_kind": index.main_kind, "runtime": embedder.runtime,
            "omp_threads": omp_threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000",
                        help="comma-separated numbers of indexed vectors (default 10000,100000)")
    parser.add_argument("--queries", type=int, default=50, help="query photos (default 50)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="times each query photo is searched (default 10)")
    parser.add_argument("-k", type=int, default=10, help="results per search (default 10)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    queries = [str(p) for p in ensure_photos(2000)[:args.queries]]
    print(f"## Query latency ({machine()})\n")
    print(f"{args.queries} query photos (1-4 MP JPEGs), each searched {args.rounds} times, "
          f"k={args.k}, default settings (ef_search 64, all cores for the model and for Faiss's "
          "OpenMP).\n")
    rows = []
    notes = []
    for size in (int(s) for s in args.sizes.split(",")):
        spec = {"size": size, "queries": queries, "k": args.k, "rounds": args.rounds}
        log(f"query: collection of {size:,} vectors")
        built = run_child(__file__, {**spec, "kind": "build"})
        log(f"query: measuring {size:,}")
        result = run_child(__file__, {**spec, "kind": "measure"})
        label = f"{result['ntotal']:,} ({result['index_kind']})"
        for stage, name in STAGE_NAMES.items():
            seconds = result["times"][stage]
            rows.append([label, name, f"{percentile_ms(seconds, 50):.1f}",
                         f"{percentile_ms(seconds, 99):.1f}", f"{1000 * np.mean(seconds):.1f}"])
        rows.append([label, "first search in a new process (open + load model and index)",
                     f"{1000 * result['cold']:.0f}", "", ""])
        notes.append(
            f"- {size:,} vectors: index {built['index_mib']:,.0f} MiB on disk, built in "
            f"{built['index_seconds']:.1f} s from the store; {result['self_hits']}/"
            f"{result['searches']} searches returned the query photo itself first "
            f"({result['runtime']}); other processes used {result['other_cores']:.2f} cores "
            "meanwhile."
        )
    print(table(["vectors (index)", "stage", "p50 ms", "p99 ms", "mean ms"], rows))
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    child = child_spec(sys.argv)
    if child is None:
        main()
    else:
        reply(build(child) if child["kind"] == "build" else measure(child))
