"""Backfill on Spark against the local engine, on one machine: what the Spark engine costs.

Both engines index the same real-photo JPEGs (benchmarks/photos.py, >= 1 MP each, in the page
cache) into a new collection, each run in a fresh interpreter, runs interleaved (local, spark,
local, spark...) so background load hits both alike. The clock is the whole `Collection.index`
call (the model is loaded on the driver beforehand, as bench_ray.py does): for the Spark engine
it includes importing PySpark, starting a local Spark (`local[*]`: one task slot per core, one
batch per task), starting its Python workers and loading the model in each. The table gives that
start-up apart ("Spark start": the JVM, the session and the plan; "first results": until the
first batch came back) and the overhead against the local engine with and without it, the CPU
time of every process of the run per image, and whether the vectors are the same.

    python benchmarks/bench_spark.py                 # 2,000 photos, 2 runs of each (about 8 min),
                                                     # then embed --shard x 4 + import vs index
    python benchmarks/bench_spark.py --repeats 3 --batch-size 64
    python benchmarks/bench_spark.py --images 6000   # start-up spread over more images
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench_ray import ips, run_index
from common import OUT, child_spec, log, machine, mib, reply, run_child, table
from photos import ensure_photos

ENGINES = ("local", "spark")


def steady(result: dict[str, Any], batch_size: int) -> float:
    """Images/s of the Spark engine once its first batch came back (workers up, models loaded)."""
    after = result["seconds"] - result["stages"]["spark_first_batch"]
    return (result["images"] - batch_size) / after


def startup(result: dict[str, Any]) -> float:
    """Seconds the Spark engine spent starting Spark (JVM, session, plan) before any work."""
    return result["stages"].get("spark_start", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="photos to index (default 2000)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each engine, interleaved (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shards", type=int, default=4,
                        help="also the sharded backfill with this many shards (0: skip it)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    folder = ensure_photos(args.images)[0].parent
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in ENGINES}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for round_ in range(args.repeats):
            for engine in ENGINES:
                spec = {"engine": engine, "folder": str(folder), "batch_size": args.batch_size,
                        "tmp": str(OUT)}
                if round_ == 0:
                    spec["vectors_out"] = f"{tmp}/{engine}.npy"
                result = run_child(__file__, spec)
                runs[engine].append(result)
                log(f"bench_spark: {engine}: {result['seconds']:.1f} s, {ips(result):.1f} "
                    f"images/s (other processes: {result['other_cores']:.2f} cores)")
        vectors = {engine: np.load(f"{tmp}/{engine}.npy") for engine in ENGINES}

    report(args, folder, runs, vectors)
    if args.shards:  # the other batch-compute backfill: N shard jobs, then one import
        from bench_shards import HEADERS, sharded_rows

        print(f"\nSharded backfill: {args.shards} x `lookalike embed --shard I/{args.shards}` "
              f"(2 at a time), then `lookalike import`, against `lookalike index`:")
        print(table(HEADERS, sharded_rows(folder, shards=args.shards, parallel=2,
                                          repeats=args.repeats, batch_size=args.batch_size)))


def report(args: argparse.Namespace, folder: Path, runs: dict[str, list[dict[str, Any]]],
           vectors: dict[str, np.ndarray]) -> None:
    local, spark = runs["local"], runs["spark"]
    local_top = min(local, key=lambda r: r["seconds"])
    local_best = local_top["seconds"]
    local_median = float(np.median([r["seconds"] for r in local]))
    local_cpu = min(1000 * r["cpu_seconds"] / r["images"] for r in local)
    print(f"## Backfill: Spark engine against the local engine, one machine ({machine()})\n")
    print(f"Photos: {folder} ({local[0]['images']:,} real-photo JPEGs, >= 1 MP each, in the page "
          f"cache), batch size {args.batch_size}, {local[0]['runtime']}; local engine: decoding "
          "workers and model threads = cores; Spark: `local[*]`, one batch per task, one model "
          f"thread per task. Best of {args.repeats} interleaved runs (median in brackets). "
          "Overhead: how much longer than the local engine, best against best (median against "
          "median), with the whole call and without Spark's start-up (JVM, session, plan). First "
          "results: from the call until the first batch came back (Python workers started and "
          "model loaded in each); images/s after first results: the rest of the run, and how "
          "much slower that is than the local engine's whole run. CPU ms/img: every process of "
          "the run (driver, JVM, Python workers), least of the runs. Other load: CPU other "
          "processes used meanwhile, in cores.\n")
    rows = []
    for engine, engine_runs in runs.items():
        best = min(engine_runs, key=lambda r: r["seconds"])
        median = float(np.median([r["seconds"] for r in engine_runs]))
        cpu = min(1000 * r["cpu_seconds"] / r["images"] for r in engine_runs)
        diff = float(np.abs(vectors[engine] - vectors["local"]).max())
        cells = [engine, f"{best['seconds']:.1f} ({median:.1f})",
                 f"{ips(best):.1f} ({best['images'] / median:.1f})"]
        if engine == "spark":
            start, start_median = startup(best), float(np.median([startup(r) for r in spark]))
            cells += [f"{start:.1f} ({start_median:.1f})",
                      f"{best['stages'].get('spark_first_batch', 0):.1f}",
                      f"{best['seconds'] / local_best - 1:+.0%} ({median / local_median - 1:+.0%})",
                      f"{(best['seconds'] - start) / local_best - 1:+.0%} "
                      f"({(median - start_median) / local_median - 1:+.0%})",
                      f"{steady(best, args.batch_size):.1f} "
                      f"({1 - steady(best, args.batch_size) / ips(local_top):+.0%})",
                      f"{cpu:.0f} ({cpu / local_cpu - 1:+.0%})",
                      f"{diff:.1e}, " + ("identical" if diff == 0 else "not identical")]
        else:
            cells += ["", "", "", "", "", f"{cpu:.0f}", ""]
        cells += [mib(best["tree_peak"]),
                  ", ".join(f"{r['other_cores']:.2f}" for r in engine_runs)]
        rows.append(cells)
    print(table(["engine", "seconds best (median)", "images/s best (median)",
                 "Spark start s", "first results s", "overhead, whole call",
                 "overhead, without Spark start", "images/s after first results (vs local)",
                 "CPU ms/img (vs local)",
                 "max abs vector diff vs local", "peak RSS MiB (all processes)",
                 "other load per run"], rows))


if __name__ == "__main__":
    child = child_spec(sys.argv)
    if child is None:
        main()
    else:
        reply(run_index(child))
