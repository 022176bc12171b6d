"""Backfill on Ray against the local engine, on one machine: what the distributed engine costs.

Both engines index the same real-photo JPEGs (benchmarks/photos.py, >= 1 MP each, in the page
cache) into a new collection, each run in a fresh interpreter, runs interleaved so background load
hits both alike. The clock is the whole `Collection.index` call (the model is loaded on the driver
beforehand, as bench_indexing.py does): for the Ray engine it includes importing Ray, starting a
local Ray, starting the actors and loading the model in each. Printed as a markdown table:
images/s (best and median), the Ray engine's overhead against the local engine in wall time and in
CPU time, where the Ray run's time went, and the vectors' largest difference between the engines.

    python benchmarks/bench_ray.py                   # 2,000 photos, 3 runs of each (about 8 min)
    python benchmarks/bench_ray.py --repeats 2 --ray-configs 1x2,2x1
    python benchmarks/bench_ray.py --images 6000 --repeats 2   # start-up spread over more images
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import OUT, Meter, child_spec, log, machine, mib, reply, run_child, table
from photos import ensure_photos


def run_index(spec: dict[str, Any]) -> dict[str, Any]:
    """Index the photo folder with one engine (local, ray or spark) into a new collection (in a
    child process); bench_spark.py runs it too."""
    from lookalike import Collection

    work = Path(tempfile.mkdtemp(prefix=f"bench-{spec['engine']}-", dir=spec["tmp"]))
    try:
        col = Collection.create(work / "collection", model="efficientnet-lite0", index="auto")
        col.embedder  # noqa: B018 - load the model before the clock starts
        engine: Any = spec["engine"]
        if engine == "ray":
            from lookalike.ingest.ray import RayEngine

            engine = RayEngine(actors=spec["actors"], cpus_per_actor=spec["cpus_per_actor"])
        # Sampled once a second, not every 50 ms: walking /proc for the ~300 threads of a local
        # Ray costs the driver ~7 ms of CPU per sample, which would be charged to the Ray engine.
        with Meter(interval=1.0) as memory:
            started = time.perf_counter()  # the whole call: importing Ray or PySpark is part
            report = col.index([spec["folder"]], engine=engine, batch_size=spec["batch_size"],
                               show_progress=False)
            seconds = time.perf_counter() - started
        if spec.get("vectors_out"):
            uris = sorted(str(path) for path in Path(spec["folder"]).glob("*.jpg"))
            np.save(spec["vectors_out"], np.stack([col.store.vector(col.find(u)) for u in uris]))
        result = {"images": report.added, "failed": len(report.failed),
                  "seconds": seconds, "stages": report.stage_seconds,
                  "tree_peak": memory.tree_peak, "other_cores": memory.other_cores,
                  "cpu_seconds": memory.tree_cpu,
                  "runtime": col.embedder.runtime}
        col.close()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ips(result: dict[str, Any]) -> float:
    return result["images"] / result["seconds"]


def median_ips(runs: list[dict[str, Any]]) -> float:
    return float(np.median([ips(r) for r in runs]))


def cpu_ms(result: dict[str, Any]) -> float:
    """CPU milliseconds per image, all processes of the run together."""
    return 1000 * result["cpu_seconds"] / result["images"]


def label(config: tuple[str, int | None, int | None]) -> str:
    engine, actors, cpus = config
    if engine == "local":
        return "local (2 decoding workers, model threads = cores)"
    return f"ray ({actors or 'one per CPU:'} actors x {cpus or 1} CPU, decode in the actor)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="photos to index (default 2000)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each configuration, interleaved (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-configs", default="default",
                        help="Ray engine configurations: 'default' and/or ACTORSxCPUS, "
                             "comma-separated (default: default)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    folder = ensure_photos(args.images)[0].parent
    configs: list[tuple[str, int | None, int | None]] = [("local", None, None)]
    for item in args.ray_configs.split(","):
        if item == "default":
            configs.append(("ray", None, None))
        else:
            actors, cpus = item.split("x")
            configs.append(("ray", int(actors), int(cpus)))

    runs: dict[tuple[str, int | None, int | None], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for round_ in range(args.repeats):
            order = configs if round_ % 2 == 0 else configs[::-1]
            for config in order:
                engine, actors, cpus = config
                spec = {"engine": engine, "actors": actors, "cpus_per_actor": cpus,
                        "folder": str(folder), "batch_size": args.batch_size, "tmp": str(OUT)}
                if round_ == 0:
                    spec["vectors_out"] = f"{tmp}/{len(runs)}.npy"
                result = run_child(__file__, spec)
                runs.setdefault(config, []).append(result)
                log(f"bench_ray: {label(config)}: {ips(result):.1f} images/s "
                    f"(other processes: {result['other_cores']:.2f} cores)")
        vectors = [np.load(f"{tmp}/{i}.npy") for i in range(len(configs))]
    report(args, folder, runs, vectors)


def report(args: argparse.Namespace, folder: Path,
           runs: dict[tuple[str, int | None, int | None], list[dict[str, Any]]],
           vectors: list[np.ndarray]) -> None:
    local = runs[("local", None, None)]
    local_best, local_median = max(map(ips, local)), median_ips(local)
    local_cpu = min(map(cpu_ms, local))
    print(f"## Backfill: Ray engine against the local engine, one machine ({machine()})\n")
    print(f"Photos: {folder} ({local[0]['images']:,} real-photo JPEGs, >= 1 MP each, in the page "
          f"cache), batch size {args.batch_size}, {local[0]['runtime']}. images/s: best of "
          f"{args.repeats} interleaved runs (median). Overhead: how much slower than the local "
          "engine, best against best (median against median); CPU ms/img: the CPU time of every "
          "process of the run (driver, workers, all of the local Ray's processes) per image, "
          "least of the runs, which background load disturbs less than the wall clock. Ray "
          "start: `ray.init` of a local "
          "Ray and planning the dataset; first batch: from then until the first results (actor "
          "processes, model loads, first batch). 'Other load': CPU other processes used "
          "meanwhile, in cores.\n")
    rows = []
    for (config, config_runs), vec in zip(runs.items(), vectors, strict=True):
        top = max(config_runs, key=ips)
        best, median = ips(top), median_ips(config_runs)
        stages = top["stages"]
        overhead = (f"{1 - best / local_best:+.0%} ({1 - median / local_median:+.0%})"
                    if config[0] == "ray" else "")
        diff = float(np.abs(vec - vectors[0]).max())
        cpu = min(map(cpu_ms, config_runs))
        cpu_overhead = f" ({cpu / local_cpu - 1:+.0%})" if config[0] == "ray" else ""
        rows.append([label(config), f"{best:.1f} ({median:.1f})", overhead,
                     f"{cpu:.0f}{cpu_overhead}",
                     f"{top['seconds']:.1f}",
                     f"{stages.get('ray_start', 0):.1f}" if config[0] == "ray" else "",
                     f"{stages.get('ray_first_batch', 0):.1f}" if config[0] == "ray" else "",
                     f"{1000 * stages['decode'] / top['images']:.1f}",
                     f"{1000 * stages['embed'] / top['images']:.1f}",
                     mib(top["tree_peak"]), f"{diff:.1e}" if config[0] == "ray" else "",
                     ", ".join(f"{r['other_cores']:.2f}" for r in config_runs)])
    print(table(["engine", "images/s best (median)", "overhead (- is faster)",
                 "CPU ms/img (vs local)",
                 "seconds (best)",
                 "ray start s", "first batch s", "decode ms/img (CPU, summed)",
                 "embed ms/img (CPU, summed)", "peak RSS MiB (all processes)",
                 "max abs vector diff vs local", "other load per run"], rows))
    # On a shared machine the best run of one engine may have had the machine to itself while
    # the other never did: the run of each with the least other load is a second comparison.
    quiet = {config: min(config_runs, key=lambda r: r["other_cores"])
             for config, config_runs in runs.items()}
    base = quiet[("local", None, None)]
    print("\nQuietest run of each (least other load): " + "; ".join(
        f"{label(config)}: {ips(r):.1f} images/s (other load {r['other_cores']:.2f} cores"
        + (f", overhead {1 - ips(r) / ips(base):+.0%})" if config[0] == "ray" else ")")
        for config, r in quiet.items()) + ".")


if __name__ == "__main__":
    child = child_spec(sys.argv)
    if child is None:
        main()
    else:
        reply(run_index(child))
