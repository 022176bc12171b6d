"""Metadata store lookups per search: SQLite (the embedded default) vs PostgreSQL.

Every search polls the store's generation counter (has anyone written?) and fetches the records
of its k = 10 hits; after a write, a reader also re-reads the tombstones. This times those calls
against a store of N rows (1280-d float32 vectors, 1 % of the rows removed), each store opened
the way a collection opens it: SQLite in WAL mode on local disk, PostgreSQL over loopback TCP
through lookalike's connection pool (a throwaway server started here, default settings, unless
``--postgres`` names one; its tables ANALYZEd after the load, as autovacuum would within a
minute). Calls run back to back in one thread, then in 4 threads at once.

    python benchmarks/bench_store.py [--rows 100000] [--queries 5000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import OUT, Meter, log, machine, percentile_ms, table
from lookalike.storage import Store, new_store, open_store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

DIM, K, BATCH = 1280, 10, 1000


def fill(store: Store, n: int) -> float:
    """Write ``n`` rows in batches of BATCH, remove 1 %; rows written per second."""
    from lookalike.storage import NewImage

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        vectors = rng.standard_normal((min(BATCH, n - start), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.write(NewImage(f"/photos/{start + i:08d}.jpg", 250_000 + i, 1_700_000_000 + i,
                             f"{start + i:064x}", 640, 480, v) for i, v in enumerate(vectors))
        if (start + BATCH) % 20_000 == 0:
            log(f"  {start + BATCH:,}/{n:,} rows")
    rate = n / (time.perf_counter() - started)
    store.mark_removed(rng.choice(n, n // 100, replace=False) + 1)
    return rate


def timed(call: Callable[[], object], n: int, threads: int = 1) -> tuple[list[float], float, float]:
    """(seconds per call, calls per second, other load in cores) over ``n`` calls per thread."""
    for _ in range(min(200, n)):
        call()
    per_thread: list[list[float]] = [[] for _ in range(threads)]

    def run(out: list[float]) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=run, args=(out,)) for out in per_thread]
    with Meter() as meter:
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - started
    seconds = [s for out in per_thread for s in out]
    return seconds, len(seconds) / wall, meter.other_cores


def measure(name: str, store: Store, n_rows: int, queries: int) -> list[list[str]]:
    rng = np.random.default_rng(1)
    active = np.array(sorted(set(range(1, n_rows + 1)) - store.tombstones()))
    picks = itertools.cycle([rng.choice(active, K, replace=False).tolist()
                             for _ in range(4096)])

    def search_work() -> None:  # what Collection.search_vector asks the store for
        store.generation()
        store.get(next(picks))

    uris = itertools.cycle([f"/photos/{i:08d}.jpg" for i in rng.integers(0, n_rows, 4096)])
    operations: list[tuple[str, Callable[[], object], int, int]] = [
        ("generation() poll", store.generation, queries, 1),
        (f"get({K} ids)", lambda: store.get(next(picks)), queries, 1),
        ("per search: poll + get", search_work, queries, 1),
        ("per search, 4 threads", search_work, queries // 4, 4),
        ("find_uri()", lambda: store.find_uri(next(uris)), queries, 1),
        (f"tombstones() ({n_rows // 100:,})", store.tombstones, max(50, queries // 25), 1),
    ]
    rows = []
    for label, call, n, threads in operations:
        seconds, rate, other = timed(call, n, threads)
        rows.append([name, label, f"{len(seconds):,}", f"{percentile_ms(seconds, 50):.3f}",
                     f"{percentile_ms(seconds, 99):.3f}", f"{rate:,.0f}", f"{other:.2f}"])
        log(f"  {label}: p50 {rows[-1][3]} ms, p99 {rows[-1][4]} ms")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument("--postgres", help="a superuser URI of an existing server (default: "
                                           "start a throwaway one)")
    args = parser.parse_args()

    import pgserver

    server = (pgserver.PostgresServer(args.postgres, None) if args.postgres
              else pgserver.start(durable=True))
    OUT.mkdir(parents=True, exist_ok=True)
    results, writes = [], []
    try:
        with server.admin() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        for kind in ("sqlite", "postgresql"):
            with tempfile.TemporaryDirectory(dir=OUT) as tmp:
                folder = Path(tmp)
                schema = server.fresh_schema()
                given = server.uri(schema) if kind == "postgresql" else None
                recorded = new_store(given or "sqlite", folder, DIM)
                store = open_store(recorded, folder=folder, dim=DIM,
                                   given=given)
                try:
                    log(f"{kind}: writing {args.rows:,} rows")
                    writes.append([kind, f"{fill(store, args.rows):,.0f}"])
                    if kind == "postgresql":  # the statistics autovacuum gathers after a load
                        with server.admin() as conn:
                            conn.execute(f'ANALYZE "{schema}".images, "{schema}".vectors')
                    results += measure(kind, store, args.rows, args.queries)
                finally:
                    store.close()
                    if kind == "postgresql":
                        server.drop_schema(schema)
    finally:
        server.stop()

    print(f"## Metadata store lookups, {args.rows:,} rows ({machine()})\n")
    print(f"SQLite {__import__('sqlite3').sqlite_version} (WAL) on local disk; PostgreSQL "
          f"{version} on loopback TCP, pool of 1-4 connections.\n")
    print(table(["store", "call", "calls", "p50 ms", "p99 ms", "calls/s", "other load"],
                results))
    print("\n\"other load\" counts the PostgreSQL server's own CPU too (it is another process).\n")
    print(table(["store", f"rows written/s (batches of {BATCH}, {DIM}-d float32)"], writes))


if __name__ == "__main__":
    main()
