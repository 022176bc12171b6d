"""Sharded backfill (`lookalike embed --shard I/N`, then `lookalike import`) against the local
engine (`lookalike index`), on one machine: what splitting a backfill into batch jobs costs.

Both run the real command line on the same real-photo JPEGs (benchmarks/photos.py, >= 1 MP each,
in the page cache), each command a fresh process as a batch job's would be, into a new
collection. The local engine is one `lookalike index` with its defaults (a decoding worker and a
model thread per core). The sharded backfill runs 4 `lookalike embed` shards 2 at a time, as a
scheduler with 2 slots would (each with 1 decoding worker and 1 model thread, so 2 at a time use
the cores as `index` does), then one `lookalike import` of the 4 files. The clock is the wall time
of all of it, every process's start-up and model load included. Runs are interleaved so
background load hits both alike. The table: seconds (best of the runs), images/s, time against
the local engine, and whether the two collections store the same vectors for every image.

    python benchmarks/bench_shards.py                       # 2,000 photos, 4 runs of each
    python benchmarks/bench_shards.py --photos 500 --repeats 1

From another benchmark: ``from bench_shards import HEADERS, sharded_rows``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import OUT, Meter, log, machine, table
from lookalike.settings import resolve
from photos import ensure_photos


@dataclass(frozen=True)
class Run:
    """One measured run: wall seconds (of which the import), and the CPU other processes used
    meanwhile, in cores (:class:`common.Meter`): the noise on a shared machine."""

    seconds: float
    importing: float
    other_cores: float


HEADERS = ["engine", "seconds: best (median)", "images/s (best)", "vs local (best)",
           "vectors identical to local", "other load per run (cores)"]


def lookalike(*args: str | Path | int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "lookalike", *map(str, args)],
                            stdout=subprocess.DEVNULL)


def wait(process: subprocess.Popen[bytes], what: str) -> None:
    if process.wait() != 0:
        raise RuntimeError(f"{what} failed (exit {process.returncode})")


def run_local(folder: Path, collection: Path, batch_size: int) -> Run:
    """`lookalike index` of ``folder`` into a new collection."""
    with Meter(interval=1.0) as load:
        started = time.perf_counter()
        wait(lookalike("index", folder, "-c", collection, "--batch-size", batch_size), "index")
        seconds = time.perf_counter() - started
    return Run(seconds, 0.0, load.other_cores)


def run_sharded(folder: Path, collection: Path, shards: int, parallel: int,
                batch_size: int) -> Run:
    """``shards`` `lookalike embed` jobs, ``parallel`` at a time (the next one starting as soon
    as one ends), then `lookalike import` of their files."""
    with Meter(interval=1.0) as load:
        seconds, importing = _sharded(folder, collection, shards, parallel, batch_size)
    return Run(seconds, importing, load.other_cores)


def _sharded(folder: Path, collection: Path, shards: int, parallel: int,
             batch_size: int) -> tuple[float, float]:
    out = collection.with_name(collection.name + "-shards")
    started = time.perf_counter()
    todo, running = list(range(shards)), []
    while todo or running:
        while todo and len(running) < parallel:
            index = todo.pop(0)
            running.append(lookalike("embed", folder, "--shard", f"{index}/{shards}", "--out",
                                     out, "--workers", 1, "--threads", 1, "--batch-size",
                                     batch_size))
        time.sleep(0.05)
        for process in [p for p in running if p.poll() is not None]:
            wait(process, "embed")
            running.remove(process)
    imported = time.perf_counter()
    wait(lookalike("import", out, "-c", collection), "import")
    done = time.perf_counter()
    return done - started, done - imported


def vectors(collection: Path) -> dict[str, np.ndarray]:
    from lookalike import Collection

    with Collection.open(collection) as col:
        return {uri: vector for uri, record in col.store.file_states().items()
                if (vector := col.store.vector(record.id)) is not None}


def identical(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> str:
    if got.keys() != expected.keys():
        return f"no: {len(got.keys() ^ expected.keys())} images differ"
    same = sum(np.array_equal(got[u], v) for u, v in expected.items())
    diff = max(float(np.abs(got[u] - v).max()) for u, v in expected.items())
    return f"{'yes' if same == len(expected) else 'no'}: {same:,}/{len(expected):,} " \
           f"(max abs diff {diff:.1e})"


def sharded_rows(folder: Path, *, shards: int = 4, parallel: int = 2, repeats: int = 1,
                 batch_size: int = 32) -> list[list[str]]:
    """Rows of :data:`HEADERS` for the local engine and the sharded backfill of the images in
    ``folder``, ``repeats`` interleaved runs of each (the best shown), vectors compared."""
    runs: dict[str, list[Run]] = {"local": [], "sharded": []}
    with tempfile.TemporaryDirectory(prefix="bench-shards-", dir=OUT) as tmp:
        for round_ in range(repeats):
            order = ("local", "sharded") if round_ % 2 == 0 else ("sharded", "local")
            for engine in order:
                collection = Path(tmp) / f"{engine}-{round_}"
                run = (run_local(folder, collection, batch_size) if engine == "local" else
                       run_sharded(folder, collection, shards, parallel, batch_size))
                runs[engine].append(run)
                log(f"bench_shards: {engine} run {round_ + 1}: {run.seconds:.1f} s (import "
                    f"{run.importing:.1f} s, other load {run.other_cores:.2f} cores)")
        expected = vectors(Path(tmp) / "local-0")
        same = identical(vectors(Path(tmp) / "sharded-0"), expected)
        images = len(expected)
    local, sharded = (min(runs[e], key=lambda r: r.seconds) for e in ("local", "sharded"))

    def cells(engine: str, best: Run) -> list[str]:
        median = np.median([r.seconds for r in runs[engine]])
        return [f"{best.seconds:.1f} ({median:.1f})", f"{images / best.seconds:.1f}",
                f"{best.seconds / local.seconds:.2f}× the time"]

    def load(engine: str) -> str:
        return ", ".join(f"{r.other_cores:.2f}" for r in runs[engine])

    return [
        ["local: `lookalike index` (defaults)", *cells("local", local), "", load("local")],
        [f"sharded: {shards} × `embed` ({parallel} at a time, 1 worker + 1 thread each), then "
         f"`import` (import alone: {sharded.importing:.1f} s)", *cells("sharded", sharded), same,
         load("sharded")],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=2000, help="photos (default 2000)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="runs of each, interleaved (default 4)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2, help="shards at a time (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    folder = ensure_photos(args.photos)[0].parent
    rows = sharded_rows(folder, shards=args.shards, parallel=args.parallel,
                        repeats=args.repeats, batch_size=args.batch_size)
    print(f"## Sharded backfill against the local engine, one machine ({machine()})\n")
    print(f"Photos: {folder} ({args.photos:,} real-photo JPEGs, >= 1 MP each, in the page cache), "
          f"model {resolve('model')}, batch size {args.batch_size}; best of {args.repeats} "
          "interleaved runs of each, wall time of every command (process start-up and model "
          "loads included).\n")
    print(table(HEADERS, rows))


if __name__ == "__main__":
    main()
