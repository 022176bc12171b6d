"""End-to-end indexing throughput: lookalike against the classic one-image-at-a-time blueprint.

Both run in this one invocation, on the same real-photo JPEGs (benchmarks/photos.py, >= 1 MP each,
already in the page cache), each configuration in a fresh interpreter so its peak memory is its
own. Printed as markdown tables:

1. lookalike with its default settings (``Collection.index``: decoding worker processes, JPEG
   draft decoding, batched ONNX Runtime, one SQLite transaction per batch) against the reference
   this file contains: for each image ``Image.open(path).convert("RGB").resize((224, 224))``, a
   PyTorch eager forward of the same EfficientNet-Lite0 backbone on a batch of 1, global average
   pool and L2 norm, then one SQLite INSERT and COMMIT. Per-image stage times, images/s, the
   speed-up, and how close the two sets of vectors are.
2. lookalike's peak memory at 2,000 and at 10,000 images (it must not grow with the count beyond
   the vectors the index holds in memory: 5 KiB per image).
3. A sweep of lookalike's knobs (decoding workers, batch size, model threads), fastest first.

    python benchmarks/bench_indexing.py                        # everything (about 15 minutes)
    python benchmarks/bench_indexing.py --sweep none --rss-images 0   # just the comparison
    python benchmarks/bench_indexing.py --images 500 --reference-images 100 --sweep none
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from common import OUT, Meter, child_spec, log, machine, mib, reply, run_child, table
from photos import ensure_photos

STAGES = ("decode", "embed", "write")


# -- the measured configurations (each runs in a child process) ----------------------------------


def run_lookalike(spec: dict[str, Any]) -> dict[str, Any]:
    """Index the photo folder into a new collection with the knobs in ``spec``."""
    from lookalike import Collection

    work = Path(tempfile.mkdtemp(prefix="lookalike-", dir=spec["tmp"]))
    try:
        col = Collection.create(work / "collection", model="efficientnet-lite0", index="auto",
                                threads=spec["threads"])
        col.embedder  # noqa: B018 - load the model before the clock starts, as the reference does
        with Meter() as memory:
            report = col.index([spec["folder"]], batch_size=spec["batch_size"],
                               workers=spec["workers"], show_progress=False)
        result = {
            "images": report.added, "failed": len(report.failed), "seconds": report.seconds,
            "stages": report.stage_seconds, "self_peak": memory.self_peak,
            "tree_peak": memory.tree_peak, "other_cores": memory.other_cores,
            "index_bytes": col.store.counts()["active"] * col.dim * 4,
            "runtime": col.embedder.runtime,
        }
        if spec.get("vectors_out"):  # the vectors of the images the reference also embedded
            uris = [os.path.abspath(p) for p in spec["compare"]]
            ids = [col.find(uri) for uri in uris]
            np.save(spec["vectors_out"], np.stack([col.store.vector(i) for i in ids]))
        col.close()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_reference(spec: dict[str, Any]) -> dict[str, Any]:
    """The classic blueprint: one image at a time, Pillow, PyTorch eager, one INSERT per image."""
    import torch
    from PIL import Image

    from lookalike.embedders import get_model_spec

    torch.set_num_threads(spec["threads"])
    model_spec = get_model_spec("efficientnet-lite0")
    backbone = model_spec.build(None).eval()  # normalised NCHW float -> (1, 1280, 7, 7)
    mean = torch.tensor(model_spec.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(model_spec.preprocess.std).view(1, 3, 1, 1)
    side = model_spec.preprocess.size

    work = Path(tempfile.mkdtemp(prefix="reference-", dir=spec["tmp"]))
    db = sqlite3.connect(work / "reference.db")
    db.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT UNIQUE, vector BLOB)")
    stages = dict.fromkeys(STAGES, 0.0)
    vectors = []
    try:
        with Meter() as memory:
            started = time.perf_counter()
            for path in spec["paths"]:
                t0 = time.perf_counter()
                image = Image.open(path).convert("RGB").resize((side, side))
                pixels = np.array(image)
                t1 = time.perf_counter()
                with torch.no_grad():
                    x = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float()
                    features = backbone((x - mean) / std).mean(dim=(2, 3))
                    vector = torch.nn.functional.normalize(features, dim=1)[0].numpy()
                t2 = time.perf_counter()
                db.execute("INSERT INTO images (path, vector) VALUES (?, ?)",
                           (os.path.abspath(path), vector.astype(np.float32).tobytes()))
                db.commit()
                t3 = time.perf_counter()
                stages["decode"] += t1 - t0
                stages["embed"] += t2 - t1
                stages["write"] += t3 - t2
                vectors.append(vector)
            seconds = time.perf_counter() - started
        np.save(spec["vectors_out"], np.stack(vectors))
        return {"images": len(vectors), "seconds": seconds, "stages": stages,
                "self_peak": memory.self_peak, "tree_peak": memory.tree_peak,
                "other_cores": memory.other_cores}
    finally:
        db.close()
        shutil.rmtree(work, ignore_errors=True)


# -- the parent: runs the configurations and prints the tables -----------------------------------

Knobs = tuple[int, int, int]  # (workers, batch_size, threads)


def run_config(folder: Path, knobs: Knobs, **extra: Any) -> dict[str, Any]:
    workers, batch_size, threads = knobs
    spec = {"kind": "lookalike", "folder": str(folder), "workers": workers,
            "batch_size": batch_size, "threads": threads, "tmp": str(OUT), **extra}
    result = {**spec, **run_child(__file__, spec)}
    log(f"indexing: lookalike {describe(result)} on {folder.name}: {ips(result):.1f} images/s "
        f"(other processes: {result['other_cores']:.2f} cores)")
    return result


def ips(result: dict[str, Any]) -> float:
    return result["images"] / result["seconds"]


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=ips)


def median_ips(runs: list[dict[str, Any]]) -> float:
    return float(np.median([ips(r) for r in runs]))


def ms_per_image(result: dict[str, Any], stage: str) -> str:
    return f"{1000 * result['stages'].get(stage, 0.0) / result['images']:.1f}"


def describe(result: dict[str, Any]) -> str:
    return (f"workers={result['workers']}, batch={result['batch_size']}, "
            f"threads={result['threads']}")


def sweep_configs(mode: str, default: Knobs) -> list[Knobs]:
    """(workers, batch_size, threads) to try besides ``default``."""
    if mode == "none":
        return []
    if mode == "full":
        grid: Iterable[Knobs] = itertools.product((0, 1, 2), (16, 32, 64), (1, 2, 3))
    else:  # workers x batch at the default thread count, then threads at the default w/b
        grid = itertools.chain(
            itertools.product((0, 1, 2), (16, 32, 64), (default[2],)),
            ((default[0], default[1], t) for t in (1, 2, 3, 4)),
        )
    return [c for c in dict.fromkeys(grid) if c != default]


def speed(runs: list[dict[str, Any]]) -> str:
    if len(runs) == 1:
        return f"{ips(runs[0]):.1f}"
    return f"{ips(best(runs)):.1f} ({median_ips(runs):.1f})"


def main() -> None:
    from lookalike import settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="photos to index (default 2000)")
    parser.add_argument("--reference-images", type=int, default=300,
                        help="the reference runs on the first N of them (default 300)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of lookalike and of the reference, interleaved (default 3)")
    parser.add_argument("--rss-images", type=int, default=10000,
                        help="also index this many photos to compare peak memory (0: skip)")
    parser.add_argument("--sweep", choices=("quick", "full", "none"), default="quick",
                        help="quick: workers x batch, then threads (default); full: the grid")
    parser.add_argument("--sweep-repeats", type=int, default=2,
                        help="runs of each swept configuration (default 2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="model threads of the reference (default 2)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    paths = ensure_photos(args.images)
    folder = paths[0].parent
    compare = [str(p) for p in paths[:args.reference_images]]
    default: Knobs = (settings.resolve("workers"), settings.resolve("batch_size"),
                      settings.resolve("threads"))

    ours: list[dict[str, Any]] = []
    reference: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        for round_ in range(args.repeats):  # interleaved, so background load hits both alike
            vectors = {"compare": compare, "vectors_out": f"{tmp}/lookalike.npy"}
            ours.append(run_config(folder, default, **(vectors if round_ == 0 else {})))
            reference.append(run_child(__file__, {
                "kind": "reference", "paths": compare, "threads": args.threads,
                "tmp": str(OUT), "vectors_out": f"{tmp}/reference.npy",
            }))
            log(f"indexing: reference on {len(compare)} photos: {ips(reference[-1]):.1f} "
                f"images/s (other processes: {reference[-1]['other_cores']:.2f} cores)")
        cosines = np.sum(np.load(f"{tmp}/lookalike.npy") * np.load(f"{tmp}/reference.npy"), 1)

    scale = [best(ours)]
    if args.rss_images and args.rss_images != args.images:
        scale.append(run_config(ensure_photos(args.rss_images)[0].parent, default))

    runs: dict[Knobs, list[dict[str, Any]]] = {default: list(ours)}
    configs = sweep_configs(args.sweep, default)
    for _ in range(args.sweep_repeats if configs else 0):
        for knobs in configs:
            runs.setdefault(knobs, []).append(run_config(folder, knobs))

    report(args, folder, len(paths), ours, reference, cosines, scale, runs, default)


def report(args: argparse.Namespace, folder: Path, n_photos: int, ours: list[dict[str, Any]],
           reference: list[dict[str, Any]], cosines: np.ndarray, scale: list[dict[str, Any]],
           runs: dict[Knobs, list[dict[str, Any]]], default: Knobs) -> None:
    ours_best, ref_best = best(ours), best(reference)
    repeats = f"best of {len(ours)} runs (median)" if len(ours) > 1 else "one run"
    print(f"## Indexing throughput ({machine()})\n")
    print(f"Photos: {folder} ({n_photos:,} real-photo JPEGs, >= 1 MP each, in the page cache). "
          f"lookalike runs with its defaults ({describe(ours_best)}, {ours_best['runtime']}); "
          f"the reference with torch threads={args.threads}. images/s: {repeats}, runs "
          "interleaved; the other columns are of the best run. 'Other load' is the CPU that "
          "other processes on the machine used meanwhile, in cores.\n")
    print(table(
        ["implementation", "images", "images/s", "decode ms/img", "decode wait ms/img",
         "embed ms/img", "write ms/img", "peak RSS MiB (main / all processes)", "other load"],
        [
            [f"lookalike ({describe(ours_best)})", f"{ours_best['images']:,}", speed(ours),
             f"{ms_per_image(ours_best, 'decode')} (in workers)",
             ms_per_image(ours_best, "decode_wait"), ms_per_image(ours_best, "embed"),
             ms_per_image(ours_best, "write"),
             f"{mib(ours_best['self_peak'])} / {mib(ours_best['tree_peak'])}",
             f"{ours_best['other_cores']:.2f}"],
            [f"reference, one image at a time (subset: first {ref_best['images']:,} photos)",
             f"{ref_best['images']:,}", speed(reference), ms_per_image(ref_best, "decode"),
             ms_per_image(ref_best, "decode"), ms_per_image(ref_best, "embed"),
             ms_per_image(ref_best, "write"),
             f"{mib(ref_best['self_peak'])} / {mib(ref_best['tree_peak'])}",
             f"{ref_best['other_cores']:.2f}"],
            ["**lookalike / reference**", "",
             f"**{ips(ours_best) / ips(ref_best):.1f}x** "
             f"({median_ips(ours) / median_ips(reference):.1f}x)", "", "", "", "", "", ""],
        ],
    ))
    print(f"\nSame {len(cosines)} photos, cosine similarity of the reference's vector and "
          f"lookalike's: mean {cosines.mean():.3f}, min {cosines.min():.3f} (same weights; the "
          "inputs differ in resizing: full decode + bicubic vs JPEG draft + bilinear, and the "
          f"model runs on {ours_best['runtime']} instead of PyTorch f32).\n")

    print("## Peak memory against the number of images\n")
    print(table(
        ["images", "images/s", "peak RSS main MiB", "peak RSS all processes MiB",
         "of which index vectors MiB", "other load"],
        [[f"{r['images']:,}", f"{ips(r):.1f}", mib(r["self_peak"]), mib(r["tree_peak"]),
          mib(r["index_bytes"]), f"{r['other_cores']:.2f}"] for r in scale],
    ))
    print("\n'All processes' sums the resident sizes of the main process and the "
          "decoding workers (sampled every 50 ms; shared pages counted once per process).\n")

    if len(runs) > 1:
        ranked = sorted(runs.items(), key=lambda item: ips(best(item[1])), reverse=True)
        fastest = ips(best(ranked[0][1]))
        print(f"## Knob sweep ({len(runs)} configurations, {n_photos:,} photos each, best of "
              f"{args.sweep_repeats} runs; defaults: best of {len(ours)})\n")
        rows = []
        for knobs, config_runs in ranked:
            top = best(config_runs)
            rows.append([*knobs, "default" if knobs == default else "", speed(config_runs),
                         f"{ips(top) / fastest:.0%}", ms_per_image(top, "decode_wait"),
                         ms_per_image(top, "embed"), mib(top["self_peak"]),
                         f"{top['other_cores']:.2f}"])
        print(table(["workers", "batch", "threads", "", "images/s best (median)", "vs fastest",
                     "decode wait ms/img", "embed ms/img", "peak RSS main MiB", "other load"],
                    rows))
        winner = best(ranked[0][1])
        print(f"\nFastest: {describe(winner)} at {fastest:.1f} images/s; the defaults "
              f"({describe(ours_best)}) reach {ips(ours_best) / fastest:.0%} of it.")


if __name__ == "__main__":
    child = child_spec(sys.argv)
    if child is None:
        main()
    else:
        reply(run_lookalike(child) if child["kind"] == "lookalike" else run_reference(child))
