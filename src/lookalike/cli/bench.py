"""`lookalike bench`: which index setting is cheapest for a recall and latency target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .base import COLLECTION_HELP, cli, collection_path

FAMILIES = ("flat", "hnsw", "hnsw+sq8", "ivf-flat", "ivf-pq+refine", "ivf-pq", "scann")


@cli.command("bench")
@click.option("-c", "--collection", default=None, help=COLLECTION_HELP)
@click.option("--synthetic", type=click.IntRange(min=1000), default=None, metavar="N",
              help="Benchmark N synthetic clustered unit vectors instead of a collection.")
@click.option("--dim", type=click.IntRange(min=8), default=256, show_default=True,
              help="Dimensions of the --synthetic vectors.")
@click.option("--queries", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Held-out query vectors (taken out of the indexed ones).")
@click.option("-k", "--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--target-recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="recall@k against exact search the recommended setting must reach.")
@click.option("--max-latency-ms", type=click.FloatRange(min=0), default=None,
              help="Single-query p99 latency (one thread) it must stay under.")
@click.option("--build", "build_sweep", is_flag=True,
              help="Also sweep HNSW M and efConstruction (slower: one build each).")
@click.option("--only", default=None, metavar="FAMILIES",
              help=f"Comma-separated index families to sweep, of: {', '.join(FAMILIES)}.")
@click.option("--prefer", type=click.Choice(["speed", "memory"]), default="speed",
              show_default=True,
              help="Among settings that meet the targets, the fastest or the smallest.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for building and the multi-threaded column [default: all cores].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("lookalike-bench"), show_default=True,
              help="Folder for bench.csv, bench.json and bench.png.")
@click.option("--apply", is_flag=True,
              help="Rebuild the collection's index with the recommended setting.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench_command(collection: str | None, synthetic: int | None, dim: int, queries: int, k: int,
                  target_recall: float, max_latency_ms: float | None, build_sweep: bool,
                  only: str | None, prefer: str, threads: int | None, out: Path, apply: bool,
                  as_json: bool) -> None:
    """Measure recall, speed and memory of index settings and recommend the cheapest.

    Exact search over the same vectors is the ground truth. Every setting reports recall@k,
    queries/s on one thread and on all, single-query p50/p99, build time and memory.

    \b
    Examples:
      lookalike bench -c photos.lookalike --target-recall 0.95 --apply
      lookalike bench --synthetic 1000000 --dim 256 --only hnsw,ivf-pq+refine
    """
    from ..index import tuning

    if apply and synthetic:
        raise click.UsageError("--apply changes a collection; it cannot be used with --synthetic.")
    families = _families(only)
    if apply:
        _check_can_apply(collection)
    vectors, source = _vectors(collection, synthetic, dim)
    base, held_out = tuning.hold_out(vectors, queries)
    if len(held_out) < 10:
        raise click.UsageError(f"{source} has {len(vectors)} vectors: bench needs at least 100.")
    candidates = tuning.default_candidates(len(base), base.shape[1], build_sweep=build_sweep)
    candidates = [c for c in candidates if c.family.lower() in families]
    points = tuning.sweep(base, held_out, k, candidates, threads=threads,
                   progress=lambda message: click.echo(message, err=True))
    best = tuning.recommend(points, target_recall, max_latency_ms, prefer)
    title = (f"{source}: {len(base):,} x {base.shape[1]} vectors, {len(held_out):,} queries, "
             f"k={k}")
    paths = tuning.save_report(points, out, k=k, target_recall=target_recall, recommended=best,
                        title=title)
    applied = None
    if apply and best is not None:
        applied = _apply(collection, best)
    if as_json:
        click.echo(json.dumps({"source": title, "recommended": best.to_dict() if best else None,
                               "applied": applied, "files": {k: str(p) for k, p in paths.items()},
                               "points": [p.to_dict() for p in points]}, indent=2))
        return
    front = {id(p) for p in tuning.pareto(points)}
    click.echo(f"# {title}\n")
    click.echo(_table(points, front, best))
    click.echo(f"\n* on the recall / speed frontier. Files: {', '.join(map(str, paths.values()))}")
    if best is None:
        limit = f" and p99 <= {max_latency_ms:g} ms" if max_latency_ms is not None else ""
        click.echo(f"No setting reached recall@{k} >= {target_recall:g}{limit}. Try --build, "
                   "a lower --target-recall or a higher --max-latency-ms.")
        return
    click.echo(f"Recommended ({prefer}): {best.label}: recall@{k} {best.recall:.3f}, "
               f"{best.qps_single:,.0f} queries/s on one thread, p99 {best.p99_ms:.2f} ms, "
               f"{best.bytes_per_vector:,.0f} bytes/vector.")
    if applied:
        click.echo(f"Applied: the index is now {applied['spec']}, searched with "
                   f"{_knobs(applied['search'])} by default ({applied['seconds']:.1f} s).")
    elif not synthetic:
        click.echo(f"Run again with --apply to rebuild {source} with it.")


def _families(only: str | None) -> set[str]:
    if not only:
        return set(FAMILIES)
    chosen = {name.strip().lower() for name in only.split(",") if name.strip()}
    unknown = chosen - set(FAMILIES)
    if unknown:
        raise click.UsageError(f"Unknown index family {', '.join(sorted(unknown))}; "
                               f"choose from {', '.join(FAMILIES)}.")
    return chosen


def _vectors(collection: str | None, synthetic: int | None, dim: int) -> tuple[Any, str]:
    if synthetic:
        from ..index.tuning import clustered_vectors

        return clustered_vectors(synthetic, dim), "synthetic clustered"
    from ..collection import Collection

    folder = collection_path(collection)
    with Collection.open(folder) as col:
        return col.index_vectors(), folder


def _check_can_apply(collection: str | None) -> None:
    from ..collection import Collection

    with Collection.open(collection_path(collection)) as col:
        if col.spec.database is not None:
            engine = "Milvus" if col.spec.milvus is not None else "Qdrant"
            raise click.UsageError(
                f"--apply would move this collection's vectors out of {engine} into a local "
                f"Faiss index. bench measures Faiss index types only; tune {engine} with --ef "
                "per search or LOOKALIKE_EF_SEARCH instead.")


def _apply(collection: str | None, best: Any) -> dict[str, Any]:
    from ..collection import Collection

    with Collection.open(collection_path(collection)) as col:
        report = col.set_index(best.spec, search=best.knobs)
        return {"spec": col.spec.text, "search": best.knobs, "seconds": report.seconds}


def _knobs(knobs: dict[str, int]) -> str:
    return ", ".join(f"{name}={value}" for name, value in knobs.items()) or "its defaults"


def _table(points: list[Any], front: set[int], best: Any) -> str:
    headers = ["setting", "recall", "q/s 1 thread", "q/s all", "p50 ms", "p99 ms", "build s",
               "bytes/vector", "memory"]
    rows = []
    for p in points:
        mark = " (recommended)" if p is best else (" *" if id(p) in front else "")
        built = f" [built {p.built}]" if p.built else ""
        rows.append([p.label + built + mark, f"{p.recall:.3f}", f"{p.qps_single:,.0f}",
                     f"{p.qps_multi:,.0f}", f"{p.p50_ms:.3f}", f"{p.p99_ms:.3f}",
                     f"{p.build_s:.1f}", f"{p.bytes_per_vector:,.0f}",
                     f"{p.memory_bytes / 2**20:,.1f} MiB"])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
