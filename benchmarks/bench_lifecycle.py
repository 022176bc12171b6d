"""The live index lifecycle: merge (compaction) cost, queries during a merge, add-to-searchable.

1. Merge time and peak memory: a collection whose store holds N synthetic 1280-d unit vectors
   (clustered, low intrinsic dimension, like CNN embeddings) is compacted in a fresh process
   (index spec ``auto``: HNSW32 at these sizes); reported with the RSS before and the peak during.
2. Query latency with no merge vs during a merge: a reader process issues ``search_vector``
   back to back while another process runs ``lookalike compact`` on the same collection.
3. Add to searchable: ``Collection.add`` is synchronous (searchable when it returns); for
   ``lookalike watch``, the time from a file appearing to another process finding it.

    python benchmarks/bench_lifecycle.py [--sizes 100000] [--seconds 20] [--watch-files 10]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    OUT,
    Meter,
    child_spec,
    log,
    machine,
    percentile_ms,
    reply,
    run_child,
    table,
)

DIM = 1280


def _vectors(n: int, seed: int) -> np.ndarray:
    basis = np.random.default_rng(0).standard_normal((64, DIM)).astype(np.float32)
    centres = np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 200, n)] + 0.6 * rng.standard_normal((n, 64)).astype(np.float32)
    x = x @ basis
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fill(folder: Path, n: int) -> None:
    from lookalike import Collection
    from lookalike.storage import NewImage

    col = Collection.create(folder)
    for start in range(0, n, 20_000):
        chunk = _vectors(min(20_000, n - start), seed=start)
        col.store.write(NewImage(uri=f"/synthetic/{start + i:08d}.jpg", size=1, mtime_ns=1,
                                 content_hash=None, vector=v) for i, v in enumerate(chunk))
        log(f"lifecycle: {start + len(chunk):,}/{n:,} rows written")
    col.close()


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def child(spec: dict[str, Any]) -> dict[str, Any]:
    from lookalike import Collection

    if spec["task"] == "merge":
        col = Collection.open(spec["folder"])
        before = _rss()
        with Meter() as meter:
            report = col.compact()
        size = (Path(spec["folder"]) / "main.index").stat().st_size
        return {"seconds": report.seconds, "rss_before": before, "rss_peak": meter.self_peak,
                "index_bytes": size, "vectors": report.main_vectors, "spec": report.spec}
    col = Collection.open(spec["folder"])  # spec["task"] == "query"
    reloads: list[float] = []
    if spec.get("background"):  # as `lookalike serve` does: load a swapped-in main elsewhere
        col.live.reload_in_background = True
        threading.Thread(target=_reload_loop, args=(col, reloads), daemon=True).start()
    queries = _vectors(256, seed=99)
    for q in queries[:16]:
        col.search_vector(q, k=10)
    laps, end, i = [], time.monotonic() + spec["seconds"], 0
    started = None
    if spec.get("merge"):
        started = subprocess.Popen([sys.executable, "-m", "lookalike", "compact", "-c",
                                    spec["folder"]], stdout=subprocess.DEVNULL)
    while time.monotonic() < end and (started is None or started.poll() is None or i < 50):
        t = time.perf_counter()
        col.search_vector(queries[i % len(queries)], k=10)
        laps.append(time.perf_counter() - t)
        i += 1
    merge_done = started is None or started.wait() == 0
    while spec.get("background") and not reloads and time.monotonic() < end + 60:
        time.sleep(0.1)  # the merge has finished: wait for the reload to be timed
    return {"laps": laps, "merge_ok": merge_done, "reload_s": reloads}


def _reload_loop(col: Any, reloads: list[float]) -> None:
    while True:
        t = time.perf_counter()
        if col.live.reload_main():
            reloads.append(time.perf_counter() - t)
        time.sleep(1.0)


def _watch_latency(files: int, tmp: Path) -> list[float]:
    from PIL import Image
    from skimage import data

    from lookalike import Collection

    folder, col_dir = tmp / "watched", tmp / "watch-col"
    folder.mkdir()
    watcher = subprocess.Popen([sys.executable, "-m", "lookalike", "watch", str(folder), "-c",
                                str(col_dir), "--seconds", str(60 + 5 * files)],
                               stderr=subprocess.DEVNULL)
    try:
        while not (col_dir / "manifest.json").exists():
            time.sleep(0.05)
        time.sleep(1.0)  # the first sync of the empty folder
        col = Collection.open(col_dir)
        photo = Image.fromarray(data.astronaut())
        rng = np.random.default_rng(3)
        delays = []
        for i in range(files):
            x, y = (int(v) for v in rng.integers(0, 200, 2))
            path = folder / f"new{i:03d}.jpg"
            tmp_path = tmp / f"staging{i:03d}.jpg"
            photo.crop((x, y, x + 300, y + 300)).save(tmp_path, quality=90)
            start = time.monotonic()
            shutil.move(tmp_path, path)  # appears whole, as a finished download would
            while col.find(path) is None:
                time.sleep(0.02)
            delays.append(time.monotonic() - start)
        return delays
    finally:
        watcher.terminate()
        watcher.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated vector counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="query run length")
    parser.add_argument("--watch-files", type=int, default=10)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"## Index lifecycle ({machine()})\n")
    merge_rows, query_rows, reload_rows = [], [], []
    with tempfile.TemporaryDirectory(dir=OUT) as tmp_name:
        tmp = Path(tmp_name)
        for n in (int(s) for s in args.sizes.split(",")):
            folder = tmp / f"col-{n}"
            _fill(folder, n)
            log(f"lifecycle: merging {n:,}")
            first = run_child(__file__, {"task": "merge", "folder": str(folder)}, timeout=7200)
            merge_rows.append([
                f"{n:,}", first["spec"], f"{first['seconds']:.1f}",
                f"{n / first['seconds']:,.0f}", f"{first['rss_before'] / 2**20:,.0f}",
                f"{first['rss_peak'] / 2**20:,.0f}", f"{first['index_bytes'] / 2**20:,.0f}",
                f"{first['index_bytes'] / n:,.0f}",
            ])
            log(f"lifecycle: queries at {n:,}, without and during a merge")
            quiet = run_child(__file__, {"task": "query", "folder": str(folder),
                                         "seconds": args.seconds})
            busy = run_child(__file__, {"task": "query", "folder": str(folder),
                                        "seconds": args.seconds * 100, "merge": True},
                             timeout=7200)
            served = run_child(__file__, {"task": "query", "folder": str(folder),
                                          "seconds": args.seconds * 100, "merge": True,
                                          "background": True}, timeout=7200)
            reload_rows.append([f"{n:,}", ", ".join(f"{s:.2f}" for s in served["reload_s"])])
            for label, result in (("no merge", quiet), ("during a merge", busy),
                                  ("during a merge, background reload (serve)", served)):
                laps = result["laps"]
                query_rows.append([f"{n:,}", label, len(laps), f"{percentile_ms(laps, 50):.2f}",
                                   f"{percentile_ms(laps, 99):.2f}",
                                   f"{max(laps) * 1000:.0f}"])
            ratio = percentile_ms(busy["laps"], 99) / percentile_ms(quiet["laps"], 99)
            query_rows.append([f"{n:,}", "**p99 during / without**", "", "", f"**{ratio:.2f}x**",
                               ""])
        delays = _watch_latency(args.watch_files, tmp) if args.watch_files else []
    print("### Merge (compaction) from the store, in a fresh process\n")
    print(table(["vectors", "main index", "seconds", "vectors/s", "RSS before MiB",
                 "peak RSS MiB", "index on disk MiB", "bytes/vector"], merge_rows))
    print("\n### search_vector latency (k=10, ef 64) in a reader process\n")
    print(table(["vectors", "while", "queries", "p50 ms", "p99 ms", "max ms"], query_rows))
    print("\nThe max during a merge includes the one search that loads the new main index "
          "after the swap; with background reload (what `lookalike serve` does) a thread loads "
          "it while searches go on with the old one.\n")
    print(table(["vectors", "background load of the new main index, s"], reload_rows))
    print()
    print("### Add to searchable\n")
    rows = [["`Collection.add` / `lookalike add`", "0 (searchable when the call "
             "returns: the vector is in the delta before it returns)", ""]]
    if delays:
        rows.append([f"`lookalike watch` (inotify), {len(delays)} new files",
                     f"p50 {np.median(delays):.2f} s", f"max {max(delays):.2f} s"])
    print(table(["path", "time", ""], rows))


if __name__ == "__main__":
    spec = child_spec(sys.argv)
    if spec is None:
        main()
    else:
        reply(child(spec))
