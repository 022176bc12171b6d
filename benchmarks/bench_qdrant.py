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

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bench_milvus
from bench_milvus import EF_CONSTRUCTION, M, compare, dataset, searched
from common import Meter, child_spec, log, reply


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
        result["ef"] = searched(index, queries, truth, spec["ef"], "qdrant")
        index.close()
    shutil.rmtree(folder, ignore_errors=True)
    result["peak"] = meter.self_peak
    result["other"] = meter.other_cores
    reply(result)


def main() -> None:
    compare(__doc__ or "", __file__, "qdrant", "Qdrant Edge HNSW (in-process)",
            "Faiss: one thread; Qdrant: its default search pool", "index build s")


if __name__ == "__main__":
    child_args = child_spec(sys.argv)
    if child_args is not None:
        child(child_args)
    else:
        main()
