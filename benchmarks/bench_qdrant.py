"""Qdrant Edge vs Faiss as lookalike's vector index: single-query search latency, recall, inserts.

The same data, ground truth and search loop as ``bench_milvus.py`` (its helpers; its Faiss run,
unchanged): N seeded synthetic unit vectors under the ids 1..N, Q held-out queries with their
exact top 10, HNSW with M=32 and efConstruction=64 on both sides (Qdrant: ``m``,
``ef_construct``), metric inner product (Qdrant: Dot), one query at a time, k=10, at each ``ef``
(Qdrant: ``hnsw_ef``, per call). Qdrant goes through ``QdrantEdgeIndex``, the client
``qdrant-edge:`` collections use: Qdrant's own engine in this process, with its default search
pool (a query searches the shard's segments in parallel); Faiss searches on one OpenMP thread.
Building uses every core.

Inserts: Faiss ``add`` builds the graph as it goes; a Qdrant Edge upsert only writes the points
(log and segment) and the graph is built by Qdrant's optimizers afterwards, timed on its own
(``wait_indexed``). Each backend runs in a fresh interpreter. A Qdrant server is not measured:
none runs here.

    python benchmarks/bench_qdrant.py [--vectors 100000] [--dim 256] [--queries 200] [--ef 64,128]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bench_milvus
from bench_milvus import EF_CONSTRUCTION, K, M, dataset, recall, timed_searches
from common import Meter, child_spec, log, machine, mib, percentile_ms, reply, run_child, table


def child(spec: dict) -> None:
    if spec["backend"] == "faiss":
        bench_milvus.child(spec)
        return
    from lookalike.index import parse_spec
    from lookalike.index.qdrant_edge import QdrantEdgeIndex

    base, queries, truth = dataset(spec["vectors"], spec["dim"], spec["queries"])
    ids = np.arange(1, len(base) + 1, dtype=np.int64)
    result: dict = {"ef": {}}
    folder = Path(tempfile.mkdtemp(prefix="bench-qdrant-"))
    with Meter() as meter:
        index = QdrantEdgeIndex(parse_spec(f"qdrant-edge:bench?m={M}&ef_construct="
                                           f"{EF_CONSTRUCTION}"), base=folder)
        index.create(spec["dim"])
        started = time.perf_counter()
        index.add(ids, base)
        result["insert_s"] = time.perf_counter() - started
        started = time.perf_counter()
        index.wait_indexed()
        index.flush()
        result["index_s"] = time.perf_counter() - started
        # Disk blocks, not sizes: Qdrant preallocates its memory-mapped files sparsely.
        result["bytes"] = sum(f.stat().st_blocks * 512 for f in folder.rglob("*")
                              if f.is_file())
        log(f"  qdrant: insert {result['insert_s']:.1f} s, index {result['index_s']:.1f} s "
            f"({index.in_graphs():,} of {index.count():,} vectors in graphs)")
        for ef in spec["ef"]:
            seconds, found = timed_searches(
                lambda q, ef=ef: index.search(q, K, ef_search=ef)[1], queries)
            result["ef"][ef] = {"p50": percentile_ms(seconds, 50),
                                "p99": percentile_ms(seconds, 99),
                                "recall": recall(found, truth)}
            log(f"  qdrant ef={ef}: p50 {result['ef'][ef]['p50']:.2f} ms, "
                f"recall {result['ef'][ef]['recall']:.3f}")
        index.close()
    shutil.rmtree(folder, ignore_errors=True)
    result["peak"] = meter.self_peak
    result["other"] = meter.other_cores
    reply(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="64,128")
    args = parser.parse_args()
    efs = [int(e) for e in args.ef.split(",")]
    spec = {"vectors": args.vectors, "dim": args.dim, "queries": args.queries, "ef": efs}
    results = {}
    for backend in ("faiss", "qdrant"):
        log(f"{backend}: {args.vectors:,} x {args.dim}-d vectors")
        results[backend] = run_child(__file__, {**spec, "backend": backend}, timeout=3600)
    names = {"faiss": "Faiss HNSW (in-process)", "qdrant": "Qdrant Edge HNSW (in-process)"}
    rows = []
    for backend, r in results.items():
        for ef in efs:
            e = r["ef"][str(ef)]
            rows.append([names[backend], str(ef), f"{e['p50']:.2f}", f"{e['p99']:.2f}",
                         f"{e['recall']:.3f}", f"{r['other']:.2f}"])
    print(f"## Search, {args.vectors:,} x {args.dim}-d vectors, k={K}, M={M}, "
          f"efConstruction={EF_CONSTRUCTION}, {args.queries} single queries (Faiss: one "
          "thread; Qdrant: its default search pool)\n")
    print(table(["backend", "ef", "p50 ms", "p99 ms", "recall@10", "other load"], rows))
    rows = []
    for backend, r in results.items():
        total = r["insert_s"] + r["index_s"]
        rows.append([names[backend], f"{args.vectors / r['insert_s']:,.0f}",
                     f"{r['index_s']:.1f}" if backend == "qdrant" else "(in add)",
                     f"{args.vectors / total:,.0f}", mib(r["bytes"]), mib(r["peak"])])
    print(f"\n## Inserts, {args.vectors:,} vectors in one call (every core)\n")
    print(table(["backend", "add/upsert rows/s", "index build s",
                 "rows/s until searchable by the index", "index MiB", "peak RSS MiB"], rows))
    print(f"\n{machine()}")


if __name__ == "__main__":
    child_args = child_spec(sys.argv)
    if child_args is not None:
        child(child_args)
    else:
        main()
