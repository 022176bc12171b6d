"""Milvus Lite vs Faiss as lookalike's vector index: single-query search latency, recall, inserts.

Data: N seeded synthetic unit vectors (``lookalike.index.tuning.clustered_vectors``: clusters
on a low-rank subspace, like CNN embeddings) under the ids 1..N, and Q held-out queries with
their exact top 10 (numpy brute force). Both backends get the same HNSW parameters (M=32,
efConstruction=64, metric inner product) and are searched one query at a time, k=10, at each
``ef``: Faiss through ``FaissIndex`` (the embedded default), Milvus through ``MilvusIndex`` (the
client `milvus-lite:` and `milvus://` collections use) on Milvus Lite, the embedded Milvus from
PyPI, served over gRPC from the same process. OpenMP is held to one thread while searching
(Milvus Lite runs Faiss in-process too); building uses every core.

Inserts: Faiss ``add`` builds the graph as it goes; Milvus Lite's insert only logs the rows, its
HNSW is built per segment after the flush (timed on its own; ``wait_indexed`` makes Milvus Lite
finish it before returning). Each backend runs in a fresh interpreter.

    python benchmarks/bench_milvus.py [--vectors 100000] [--dim 256] [--queries 200] [--ef 64,128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    Meter,
    child_spec,
    log,
    machine,
    mib,
    percentile_ms,
    proc_sample,
    reply,
    run_child,
    table,
)

K, M, EF_CONSTRUCTION = 10, 32, 64
WARMUP = 10


def dataset(n: int, dim: int, queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, queries, exact top-k ids) — the same in every child (seeded)."""
    from lookalike.index.tuning import clustered_vectors

    vectors = clustered_vectors(n + queries, dim, seed=7)
    base, held = vectors[:n], vectors[n:]
    truth = np.empty((queries, K), np.int64)
    for start in range(0, queries, 100):
        scores = held[start:start + 100] @ base.T
        truth[start:start + 100] = np.argsort(-scores, axis=1)[:, :K] + 1  # ids are 1..n
    return base, held, truth


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K
                          for f, t in zip(found, truth, strict=True)]))


def settle(timeout: float = 300.0) -> None:
    """Wait until this process is idle: Milvus Lite compacts and (re)builds segment indexes in a
    background thread after a flush, which would otherwise share the cores with the searches."""
    deadline, quiet = time.monotonic() + timeout, 0
    cpu = proc_sample(os.getpid())[1]
    while quiet < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        now = proc_sample(os.getpid())[1]
        quiet = quiet + 1 if now - cpu < 0.05 else 0
        cpu = now


def timed_searches(search, queries: np.ndarray) -> tuple[list[float], list[np.ndarray]]:
    for q in queries[:WARMUP]:
        search(q[None])
    seconds, found = [], []
    for q in queries:
        started = time.perf_counter()
        ids = search(q[None])
        seconds.append(time.perf_counter() - started)
        found.append(ids[0])
    return seconds, found


def child(spec: dict) -> None:
    import faiss

    from lookalike.index import build_index, parse_spec

    base, queries, truth = dataset(spec["vectors"], spec["dim"], spec["queries"])
    ids = np.arange(1, len(base) + 1, dtype=np.int64)
    result: dict = {"ef": {}}
    with Meter() as meter:
        if spec["backend"] == "faiss":
            started = time.perf_counter()
            index = build_index(parse_spec(f"HNSW{M},efConstruction={EF_CONSTRUCTION}"),
                                spec["dim"], ids, base)
            result["insert_s"] = time.perf_counter() - started
            result["index_s"] = 0.0
            result["bytes"] = index.memory_bytes
        else:
            from lookalike.index.milvus_index import MilvusIndex

            folder = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
            index = MilvusIndex(parse_spec(f"milvus-lite:v.db/bench?M={M}&efConstruction="
                                           f"{EF_CONSTRUCTION}"), base=folder)
            index.create(spec["dim"])
            started = time.perf_counter()
            index.add(ids, base, replace=False)
            result["insert_s"] = time.perf_counter() - started
            started = time.perf_counter()
            index.flush()
            index.wait_indexed()
            result["index_s"] = time.perf_counter() - started
            settle()
            result["bytes"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            log(f"  milvus: insert {result['insert_s']:.1f} s, flush + index "
                f"{result['index_s']:.1f} s")
        faiss.omp_set_num_threads(1)
        result["ef"] = searched(index, queries, truth, spec["ef"], spec["backend"])
    if spec["backend"] == "milvus":
        index.close()
        shutil.rmtree(folder, ignore_errors=True)
    result["peak"] = meter.self_peak
    result["other"] = meter.other_cores
    reply(result)


def searched(index: Any, queries: np.ndarray, truth: np.ndarray, efs: list[int],
             label: str) -> dict[int, dict[str, float]]:
    """p50, p99 and recall@K of single-query searches of ``index`` at each ef."""
    results = {}
    for ef in efs:
        seconds, found = timed_searches(lambda q, ef=ef: index.search(q, K, ef_search=ef)[1],
                                        queries)
        results[ef] = {"p50": percentile_ms(seconds, 50), "p99": percentile_ms(seconds, 99),
                       "recall": recall(found, truth)}
        log(f"  {label} ef={ef}: p50 {results[ef]['p50']:.2f} ms, "
            f"recall {results[ef]['recall']:.3f}")
    return results


def compare(doc: str, script: str, backend: str, name: str, threads: str, build: str) -> None:
    """The main() of a benchmark (its docstring ``doc``) of Faiss against ``backend`` (called
    ``name`` in the tables), each measured in a child process running ``script``: the search
    table (``threads`` says who searched with how many threads), then the insert table
    (``build``: the column of the backend's own index build)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="64,128")
    args = parser.parse_args()
    efs = [int(e) for e in args.ef.split(",")]
    spec = {"vectors": args.vectors, "dim": args.dim, "queries": args.queries, "ef": efs}
    results = {}
    for which in ("faiss", backend):
        log(f"{which}: {args.vectors:,} x {args.dim}-d vectors")
        results[which] = run_child(script, {**spec, "backend": which}, timeout=3600)
    names = {"faiss": "Faiss HNSW (in-process)", backend: name}
    rows = []
    for which, r in results.items():
        for ef in efs:
            e = r["ef"][str(ef)]
            rows.append([names[which], str(ef), f"{e['p50']:.2f}", f"{e['p99']:.2f}",
                         f"{e['recall']:.3f}", f"{r['other']:.2f}"])
    print(f"## Search, {args.vectors:,} x {args.dim}-d vectors, k={K}, M={M}, "
          f"efConstruction={EF_CONSTRUCTION}, {args.queries} single queries, {threads}\n")
    print(table(["backend", "ef", "p50 ms", "p99 ms", "recall@10", "other load"], rows))
    rows = []
    for which, r in results.items():
        total = r["insert_s"] + r["index_s"]
        rows.append([names[which], f"{args.vectors / r['insert_s']:,.0f}",
                     f"{r['index_s']:.1f}" if which == backend else "(in add)",
                     f"{args.vectors / total:,.0f}", mib(r["bytes"]), mib(r["peak"])])
    print(f"\n## Inserts, {args.vectors:,} vectors in one call (every core)\n")
    print(table(["backend", "add/insert rows/s", build,
                 "rows/s until searchable by the index", "index MiB", "peak RSS MiB"], rows))
    print(f"\n{machine()}")


def main() -> None:
    compare(__doc__ or "", __file__, "milvus", "Milvus Lite HNSW (gRPC, in-process)", "one thread",
            "flush + index build s")


if __name__ == "__main__":
    child_args = child_spec(sys.argv)
    if child_args is not None:
        child(child_args)
    else:
        main()
