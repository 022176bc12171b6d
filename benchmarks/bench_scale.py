"""Index types at scale: build time, memory, recall@10 and latency on 1M x 256 clustered vectors,
and what 50M images would need per index type.

    python benchmarks/bench_scale.py [--n 1000000] [--dim 256] [--project 50000000]

The same engine as `lookalike bench --synthetic N --dim D`; this script adds the projection to a
larger collection. Results (CSV, JSON, PNG) are written to benchmarks/out/scale-<n>x<dim>/.
"""

from __future__ import annotations

import argparse
import math
import time

from common import OUT, log, machine, table
from lookalike.index import tuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--project", type=int, default=50_000_000,
                        help="Collection size to estimate memory and hardware for.")
    parser.add_argument("--only", default=None, help="Comma-separated families (see bench).")
    parser.add_argument("--no-flat", action="store_true", help="Skip the exact Flat row.")
    parser.add_argument("--keep", action="store_true",
                        help="Save each built index under the output folder and reuse it on the "
                             "next run (re-measure without rebuilding; needs disk: ~6 GB at 1M).")
    args = parser.parse_args()

    started = time.perf_counter()
    log(f"generating {args.n:,} x {args.dim} clustered vectors")
    base, queries = tuning.hold_out(tuning.clustered_vectors(args.n + args.queries, args.dim),
                                    args.queries)
    candidates = tuning.default_candidates(len(base), args.dim, flat=not args.no_flat)
    if args.only:
        wanted = {f.strip().lower() for f in args.only.split(",")}
        candidates = [c for c in candidates if c.family.lower() in wanted]
    folder = OUT / f"scale-{args.n}x{args.dim}"
    points = tuning.sweep(base, queries, args.k, candidates, progress=log,
                          keep=folder / "indexes" if args.keep else None)
    best = tuning.recommend(points, args.target_recall)
    hnsw = tuning.recommend([p for p in points if p.family == "HNSW"], args.target_recall)
    title = f"{len(base):,} x {args.dim} clustered vectors, {len(queries):,} queries, k={args.k}"
    tuning.save_report(points, folder, k=args.k, target_recall=args.target_recall,
                       recommended=best, title=title)

    print(f"# Index types at scale: {title}\n\n{machine()}\n")
    print(table(["setting", f"recall@{args.k}", "q/s 1 thread", "q/s all", "p50 ms", "p99 ms",
                 "build s", "bytes/vector"],
                [[p.label, f"{p.recall:.3f}", f"{p.qps_single:,.0f}", f"{p.qps_multi:,.0f}",
                  f"{p.p50_ms:.3f}", f"{p.p99_ms:.3f}", f"{p.build_s:,.0f}",
                  f"{p.bytes_per_vector:,.0f}"] for p in points]))
    print(f"\nFiles: {folder}/bench.csv, bench.json, bench.png")
    for name, point in (("Recommended (fastest)", best), ("Recommended HNSW", hnsw)):
        if point:
            print(f"\n{name} at recall@{args.k} >= {args.target_recall:g}: {point.label}: "
                  f"recall {point.recall:.3f}, {point.qps_single:,.0f} q/s on one thread")
    print(f"\n## Estimated for {args.project:,} images\n")
    print(projection(points, args.project, len(base), args.target_recall))
    log(f"done in {time.perf_counter() - started:,.0f} s")


def projection(points: list[tuning.BenchPoint], project: int, measured: int,
               target_recall: float) -> str:
    """Per family, its fastest setting meeting the target, scaled from bytes/vector measured.

    Memory scales linearly. Build time is scaled as n log n (graph and k-means work both grow a
    little faster than n) and per core; query speed is taken as measured, which flatters every
    type a little at 50x the size (a graph gets deeper, lists get longer).
    """
    rows = []
    for family in dict.fromkeys(p.family for p in points):
        point = tuning.recommend([p for p in points if p.family == family], target_recall)
        if point is None:
            best = max((p for p in points if p.family == family), key=lambda p: p.recall)
            rows.append([family, f"(best recall {best.recall:.3f})", "-", "-", "-", "-"])
            continue
        memory = point.bytes_per_vector * project
        scale = project * math.log(project) / (measured * math.log(measured))
        core_hours = point.build_s * point.threads * scale / 3600
        cores_1k = math.ceil(1000 / point.qps_single)
        rows.append([family, point.label, f"{point.recall:.3f}", f"{memory / 2**30:,.0f} GiB",
                     f"{core_hours:,.0f} core-hours", f"{cores_1k}"])
    return table(["index type", "setting", "recall", "index memory", "build (est.)",
                  "cores for 1,000 q/s"], rows)


if __name__ == "__main__":
    main()
