"""Filtered search at scale: ``search_vector(where=...)`` against exact filtered search.

A collection of N synthetic clustered vectors (default 1,000,000; the recipe of
``tuning.clustered_vectors``: unit vectors around √N Gaussian centres on a 64-d subspace of the
default model's 1,280 dimensions, like CNN embeddings) is written straight into its store, as
bench_dedup does, each row with JSON metadata ``{"s10": a, "s100": b, "s1000": c, "s10000": d}``:
key ``sK`` takes K values, each on exactly N/K images (a seeded permutation, independent of the
vectors and of the other keys). So ``s10 = v`` passes 10 % of the images, ``s100 = v`` 1 %,
``s1000 = v`` 0.1 %, ``s10000 = v`` 0.01 %, and ``exists s10`` all of them (100 %). Each query
draws its own value, so no single filter result serves every query (the searcher may cache one
per store generation, as a server would).

The index is the one a user gets: spec ``auto`` (HNSW32, efConstruction=128 at this size) after
``Collection.reduce(256)``, a PCA from the model's 1,280 to 256 dimensions. At a million images
that is what the README recommends and measures (``lookalike bench --synthetic 1000000 --dim
256``): the index is 1.3 GB instead of 5 GB, builds faster, and an exact search
over a filtered subset (what a selective filter costs) reads 1 KB instead of 5 KB a vector.
Other engines (``--engines``) are collections of their own with the same data and the same
PCA: Qdrant Edge (``qdrant-edge``) and Milvus Lite (``milvus-lite``), each at the N given.

Queries are stored vectors moved a little inside the data's subspace (cosine ≈ 0.95 to the row
they come from), so near but not equal to stored ones. Each is searched once per selectivity in
a fresh process with ``col.search_vector(q, k=10, where=EXPR, qe=0)``; latency is that whole
call (filter, index, rows). Ground truth is exact filtered search with numpy in the space the
index searches (the stored vectors through the collection's PCA) over the ids
``store.matching(Where.parse(EXPR))`` returns; recall@10 counts a returned id as right when it
passes the filter and scores at least the 10th exact score (ties tolerated).

    python benchmarks/bench_filter.py [--n 1000000] [--queries 200] [--keep]
        [--engines faiss,qdrant-edge:1000000,milvus-lite:100000] [--dim 256] [--build-only]

``--keep`` keeps each built collection under benchmarks/out/filter-<n> (Faiss) or
filter-<engine>-<n> and reuses it; without it they are deleted at the end (the 1M store alone
is 5 GB of 1,280-d vectors).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    OUT,
    Meter,
    child_spec,
    log,
    machine,
    mib,
    percentile_ms,
    reply,
    run_child,
    table,
)

DIM = 1280  # the default model's (efficientnet-lite0-gem)
INTRINSIC = 64
CHUNK = 20_000
KEYS = (10, 100, 1000, 10_000)  # metadata key sK takes K values
SELECTIVITIES = {"100 %": None, "10 %": 10, "1 %": 100, "0.1 %": 1000, "0.01 %": 10_000}
SPECS = {"faiss": "auto", "qdrant-edge": "qdrant-edge", "milvus-lite": "milvus-lite"}
K = 10


# -- data -------------------------------------------------------------------------------------


def synthetic_chunks(n: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, unit vectors) chunks of the N clustered vectors, the same on every call."""
    basis, centres = _space(n, seed)
    for start in range(0, n, CHUNK):
        rng = np.random.default_rng([seed, 2, start])
        m = min(CHUNK, n - start)
        x = centres[rng.integers(0, len(centres), m)] + 0.7 * rng.standard_normal((m, INTRINSIC))
        x = x.astype(np.float32) @ basis
        yield start, x / np.linalg.norm(x, axis=1, keepdims=True)


def _space(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    basis = np.random.default_rng(seed).standard_normal((INTRINSIC, DIM)).astype(np.float32)
    centres = np.random.default_rng(seed + 1).standard_normal((int(n ** 0.5), INTRINSIC))
    return basis, centres


def metadata_values(n: int, seed: int) -> dict[int, np.ndarray]:
    """For each key sK, the value of every row: each of 0..K-1 on exactly n/K rows."""
    return {k: np.random.default_rng([seed, 3, k]).permutation(n) % k for k in KEYS}


def folder_for(engine: str, n: int) -> Path:
    return OUT / (f"filter-{n}" if engine == "faiss" else f"filter-{engine}-{n}")


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the collection of ``spec`` (rows, metadata, PCA, index) unless it is kept."""
    from lookalike import Collection
    from lookalike.settings import DEFAULT_MODEL
    from lookalike.storage import NewImage

    folder, n, seed = Path(spec["folder"]), spec["n"], spec["seed"]
    marker = folder / "bench.json"
    recipe = {key: spec[key] for key in ("n", "seed", "dim", "engine")}
    if marker.is_file() and json.loads(marker.read_text())["recipe"] == recipe:
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    values = metadata_values(n, seed)
    started = time.perf_counter()
    with Meter() as meter:
        col = Collection.create(folder, model=DEFAULT_MODEL, index=SPECS[spec["engine"]])
        with col.writer():
            for start, vectors in synthetic_chunks(n, seed):
                rows = range(start, start + len(vectors))
                ids = col.store.write(
                    NewImage(f"/synthetic/{i // 1000:04d}/{i:07d}.jpg", 100_000 + i % 977,
                             (1_600_000_000 + 60 * i) * 10**9, f"{i:032x}", 1024, 768,
                             vectors[i - start],
                             metadata=json.dumps({f"s{k}": int(values[k][i]) for k in KEYS}))
                    for i in rows)
                if ids != [i + 1 for i in rows]:  # ids count from 1 in row order
                    raise RuntimeError(f"unexpected ids from the store at row {start}")
                if start % 100_000 == 0:
                    log(f"filter: stored {start + len(vectors):,} of {n:,} rows")
        rows_seconds = time.perf_counter() - started
        log(f"filter: reduce to {spec['dim']} dimensions and build the index")
        report = col.reduce(spec["dim"])
        col.close()
    result = {"recipe": recipe, "rows_seconds": rows_seconds,
              "pca_seconds": report.fit_seconds, "index_seconds": report.build_seconds,
              "index_bytes": report.index_bytes_after, "peak": meter.self_peak,
              "other": meter.other_cores,
              "folder_bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}
    marker.write_text(json.dumps(result, indent=2) + "\n")
    return result


# -- measuring --------------------------------------------------------------------------------


def queries(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, vectors): ``count`` stored rows, each moved a little inside the data's subspace."""
    rng = np.random.default_rng([seed, 4])
    rows = np.sort(rng.choice(n, count, replace=False))
    base = np.empty((count, DIM), np.float32)
    for start, vectors in synthetic_chunks(n, seed):
        mine = (rows >= start) & (rows < start + len(vectors))
        base[mine] = vectors[rows[mine] - start]
    basis, _ = _space(n, seed)
    step = rng.standard_normal((count, INTRINSIC)).astype(np.float32) @ basis
    step /= np.linalg.norm(step, axis=1, keepdims=True)
    moved = base + 0.3 * step
    return rows, moved / np.linalg.norm(moved, axis=1, keepdims=True)


def expressions(count: int, seed: int) -> dict[str, list[str]]:
    """For each selectivity, one filter per query (its own random value)."""
    rng = np.random.default_rng([seed, 5])
    return {name: [f"exists s{KEYS[0]}" if k is None else f"s{k} = {rng.integers(k)}"
                   for _ in range(count)] for name, k in SELECTIVITIES.items()}


def strategy(col: Any, expr: str) -> str | None:
    """The plan the searcher chooses for ``expr`` (post-filter, pre-filter, exact), asked after
    the timed search: it reuses the sample and the slice that search cached. A post-filter that
    finds too few falls back to a pre-filter, which this does not see."""
    return str(col.search_plan(expr).strategy)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time every filtered search in this fresh process, then score it against exact search."""
    from lookalike import Collection

    n, seed, count = spec["n"], spec["seed"], spec["queries"]
    col = Collection.open(spec["folder"])
    live = col.live
    filtered = "where" in inspect.signature(col.search_vector).parameters
    _, query_vectors = queries(n, count, seed)
    exprs = expressions(count, seed)
    for q in query_vectors[:20]:  # warm-up: index pages, store, projection
        col.search_vector(q, K, qe=0)
    began = time.perf_counter()  # the first filter draws the sample that estimates shares
    if filtered:
        col.search_vector(query_vectors[0], K, where=f"exists s{KEYS[1]}", qe=0)
    first_filtered = time.perf_counter() - began
    results: dict[str, Any] = {}
    for name in SELECTIVITIES:
        if not filtered and name != "100 %":
            continue
        found, seconds = [], []
        with Meter() as meter:
            for q, expr in zip(query_vectors, exprs[name], strict=True):
                began = time.perf_counter()
                hits = (col.search_vector(q, K, where=expr, qe=0) if filtered
                        else col.search_vector(q, K, qe=0))
                seconds.append(time.perf_counter() - began)
                found.append([h.image_id for h in hits])
        chosen = [strategy(col, expr) if filtered else None for expr in exprs[name]]
        results[name] = {"found": found, "seconds": seconds, "strategy": chosen,
                         "other": meter.other_cores}
        log(f"filter: {name} searched, p50 {percentile_ms(seconds, 50):.1f} ms")
    exact = exact_filtered(col, live, n, seed, query_vectors, exprs, results)
    facts = {"vectors": live.main_vectors + live.delta_vectors, "index": live.main_kind,
             "index_dim": col.index_dim, "filtered": filtered, "first_filtered": first_filtered}
    col.close()
    return {**facts, "results": exact}


def exact_filtered(col: Any, live: Any, n: int, seed: int, query_vectors: np.ndarray,
                   exprs: dict[str, list[str]], results: dict[str, Any]) -> dict[str, Any]:
    """Recall of each search against exact filtered search over the projected stored vectors."""
    base = np.empty((n, col.index_dim), np.float32)
    stored = col.store.vectors([1, n // 2 + 1, n])
    for start, vectors in synthetic_chunks(n, seed):
        base[start:start + len(vectors)] = live.project(vectors)
        for image_id in [i for i in stored if start < i <= start + len(vectors)]:
            if not np.allclose(stored[image_id], vectors[image_id - 1 - start], atol=1e-6):
                raise RuntimeError(f"stored vector {image_id} is not generated row {image_id - 1}")
    queries_projected = live.project(query_vectors)
    values = metadata_values(n, seed)
    matching = getattr(col.store, "matching", None)
    disagreements = 0
    for name, result in results.items():
        recalls, outside, short, matching_seconds = [], 0, 0, []
        by_expr: dict[str, list[int]] = {}  # queries sharing a filter are scored together
        for number, expr in enumerate(exprs[name]):
            by_expr.setdefault(expr, []).append(number)
        for expr, numbers in by_expr.items():
            rows = _known_rows(expr, values, n)
            if matching is not None:
                from lookalike.where import Where

                began = time.perf_counter()
                passing = np.asarray(matching(Where.parse(expr)), np.int64) - 1
                matching_seconds.append(time.perf_counter() - began)
                disagreements += int(not np.array_equal(passing, rows))
                rows = passing
            among = base if len(rows) == n else base[rows]
            scores = among @ queries_projected[numbers].T  # (allowed, queries)
            want = min(K, len(rows))
            kth = np.partition(scores, len(rows) - want, axis=0)[len(rows) - want]
            for column, number in enumerate(numbers):
                found = np.asarray(result["found"][number], np.int64) - 1
                ok = np.isin(found, rows)
                outside += int((~ok).sum())
                short += int(len(found) < want)
                good = ok.copy()  # ties tolerated: any allowed id scoring the k-th best or more
                good[ok] = base[found[ok]] @ queries_projected[number] >= kth[column] - 1e-5
                recalls.append(min(int(good.sum()), want) / want)
        result.update(recall=float(np.mean(recalls)), outside=outside, short=short,
                      matching=matching_seconds)
        del result["found"]
    return {"selectivities": results, "matching_disagreements": disagreements,
            "ground_truth": "store.matching" if matching is not None else "known values"}


def _known_rows(expr: str, values: dict[int, np.ndarray], n: int) -> np.ndarray:
    """The rows an expression of :func:`expressions` passes, from the values written."""
    if expr.startswith("exists"):
        return np.arange(n, dtype=np.int64)
    key, value = expr.split(" = ")
    return np.flatnonzero(values[int(key[1:])] == int(value)).astype(np.int64)


# -- the run ----------------------------------------------------------------------------------


def engines(text: str, n: int) -> list[tuple[str, int]]:
    """``faiss,qdrant-edge:100000`` -> [("faiss", n), ("qdrant-edge", 100000)]."""
    out = []
    for item in text.split(","):
        engine, _, size = item.strip().partition(":")
        if engine not in SPECS:
            raise SystemExit(f"unknown engine {engine!r}: use {', '.join(SPECS)}")
        size_n = int(size) if size else n
        if size_n % KEYS[-1]:
            raise SystemExit(f"{engine}: n must be a multiple of {KEYS[-1]:,} (exact "
                             "selectivities), got {size_n:,}")
        out.append((engine, size_n))
    return out


def report(engine: str, n: int, measured: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, result in measured["results"]["selectivities"].items():
        seconds = result["seconds"]
        chosen = Counter(s for s in result["strategy"] if s)
        matching = (f"{percentile_ms(result['matching'], 50):.1f}" if result["matching"]
                    else "-")
        flags = []
        if result["outside"]:
            flags.append(f"{result['outside']} hits outside the filter")
        if result["short"]:
            flags.append(f"{result['short']} short lists")
        index = measured["index"].split(" at ")[0]  # a database's location is not news
        rows.append([name, f"{engine} ({index}, {measured['index_dim']}-d)",
                     f"{n:,}", f"{result['recall']:.3f}", f"{percentile_ms(seconds, 50):.2f}",
                     f"{percentile_ms(seconds, 99):.2f}",
                     ", ".join(f"{s} {c}" for s, c in chosen.most_common()) or "-", matching,
                     f"{result['other']:.2f}", "; ".join(flags) or "-"])
    return rows


def main() -> None:
    if (spec := child_spec(sys.argv)) is not None:
        reply(build(spec) if spec["kind"] == "build" else measure(spec))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--engines", default="faiss",
                        help="comma-separated faiss, qdrant-edge, milvus-lite, each with an "
                             "optional :N (default --n)")
    parser.add_argument("--queries", type=int, default=200, help="per selectivity")
    parser.add_argument("--dim", type=int, default=256, help="PCA dimension of the index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"# Filtered search\n\n{machine()}\n")
    rows, notes = [], []
    for engine, n in engines(args.engines, args.n):
        folder = folder_for(engine, n)
        spec = {"folder": str(folder), "n": n, "seed": args.seed, "dim": args.dim,
                "engine": engine, "queries": args.queries}
        log(f"filter: {engine} collection of {n:,} vectors at {folder}")
        built = run_child(__file__, {**spec, "kind": "build"}, timeout=6 * 3600)
        notes.append(
            f"- {engine}, {n:,} vectors: rows written in {built['rows_seconds']:.0f} s, PCA fit "
            f"{built['pca_seconds']:.0f} s, index built in {built['index_seconds']:.0f} s"
            + (f" ({mib(built['index_bytes'])} MiB)" if built["index_bytes"] else "")
            + f", collection {mib(built['folder_bytes'])} MiB "
            f"on disk; build peak {mib(built['peak'])} MiB, other load {built['other']:.2f} "
            "cores.")
        if not args.build_only:
            log(f"filter: measuring {engine} in a fresh process")
            measured = run_child(__file__, {**spec, "kind": "measure"}, timeout=3 * 3600)
            rows += report(engine, n, measured)
            results = measured["results"]
            notes.append(
                f"- {engine}: ground truth from {results['ground_truth']}; the first filtered "
                f"search of the process (draws the sample that estimates shares) took "
                f"{1000 * measured['first_filtered']:.0f} ms"
                + (f"; {results['matching_disagreements']} filters where store.matching "
                   "disagreed with the values written" if results["matching_disagreements"]
                   else "")
                + ("" if measured["filtered"] else "; `search_vector` has no `where=` yet: "
                   "only the unfiltered search was measured") + ".")
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if rows:
        print(f"{args.queries} queries per selectivity, k={K}, `search_vector(q, k=10, "
              "where=EXPR, qe=0)`, default ef_search; recall@10 against exact filtered "
              "search.\n")
        print(table(["selectivity", "engine (index)", "vectors", "recall@10", "p50 ms",
                     "p99 ms", "strategy (queries)", "store.matching p50 ms (uncached)",
                     "other load (cores)", "problems"], rows))
        print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
