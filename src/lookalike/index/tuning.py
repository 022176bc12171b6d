"""The recall / speed / memory trade-off of index settings: the engine of `lookalike bench`.

Ground truth is an exact inner-product search over the same vectors; every candidate setting
is built once and then searched with each of its per-call knobs (efSearch, nprobe, ...).
Queries are held out of the indexed vectors, as new images would be.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from ..errors import MissingDependencyError
from .faiss_index import omp_threads
from .spec import parse_spec

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Candidate:
    """One index build (``spec``) and the per-call search knobs to try on it."""

    spec: str
    family: str
    knob_grid: tuple[dict[str, int], ...] = ({},)


@dataclass(frozen=True)
class BenchPoint:
    """What one setting (a spec plus its search knobs) measured."""

    spec: str
    family: str
    knobs: dict[str, int]
    recall: float
    qps_single: float
    qps_multi: float
    p50_ms: float
    p99_ms: float
    build_s: float
    memory_bytes: int
    vectors: int
    threads: int
    built: str = ""  # what was actually built, when it differs from spec (too few to train)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_per_vector(self) -> float:
        return self.memory_bytes / max(self.vectors, 1)

    @property
    def label(self) -> str:
        knobs = " ".join(f"{name}={value}" for name, value in self.knobs.items())
        return f"{self.spec} {knobs}".strip()

    def meets(self, target_recall: float, max_latency_ms: float | None) -> bool:
        return self.recall >= target_recall and (max_latency_ms is None
                                                 or self.p99_ms <= max_latency_ms)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label, "bytes_per_vector": self.bytes_per_vector}


# -- data ------------------------------------------------------------------------------------


def clustered_vectors(n: int, dim: int, *, seed: int = 0, clusters: int | None = None,
                      intrinsic: int = 64) -> np.ndarray:
    """Unit vectors in clusters on a low-dimensional subspace, like CNN embeddings.

    Real image embeddings are neither uniform (trivially hard) nor tight blobs (trivially easy):
    points scatter around many centres in a subspace of much lower rank than ``dim``.
    """
    clusters = clusters or max(16, int(math.sqrt(n)))
    intrinsic = min(intrinsic, dim)
    basis = np.random.default_rng(seed).standard_normal((intrinsic, dim)).astype(np.float32)
    centres = np.random.default_rng(seed + 1).standard_normal((clusters, intrinsic))
    rng = np.random.default_rng(seed + 2)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        labels = rng.integers(0, clusters, stop - start)
        x: np.ndarray = centres[labels] + 0.7 * rng.standard_normal((stop - start, intrinsic))
        x = x.astype(np.float32) @ basis
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def hold_out(vectors: np.ndarray, queries: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries): ``queries`` random rows taken out of ``vectors``."""
    queries = min(queries, len(vectors) // 10)
    picked = np.random.default_rng(seed).choice(len(vectors), queries, replace=False)
    mask = np.ones(len(vectors), bool)
    mask[picked] = False
    return vectors[mask], vectors[picked]


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The ids (row numbers of ``base``) of each query's k nearest by inner product."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
    return ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k nearest (``k = truth.shape[1]``) that were found."""
    k = truth.shape[1]
    hits = [len(np.intersect1d(f[:k], t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


# -- candidates ------------------------------------------------------------------------------


def ivf_lists(n: int) -> int:
    """A power of two near 4·sqrt(n), with at least 39 training vectors per list."""
    lists = 2 ** round(math.log2(max(4 * math.sqrt(n), 16)))
    while lists > 16 and n < 39 * lists:
        lists //= 2
    return lists


def pq_subquantizers(dim: int) -> int:
    """Fast-scan PQ codes of 4 bits per sub-vector of 2-4 dimensions, as many as divide ``dim``."""
    for dsub in (4, 2, 8, 16):
        if dim % dsub == 0 and (dim // dsub) % 2 == 0:
            return dim // dsub
    return dim


def default_candidates(n: int, dim: int, *, build_sweep: bool = False, scann: bool = True,
                       flat: bool = True) -> list[Candidate]:
    """The settings `lookalike bench` sweeps for ``n`` vectors of ``dim`` dimensions."""
    efs = tuple({"ef_search": ef} for ef in (16, 24, 32, 40, 48, 64, 96, 128, 256))
    lists = ivf_lists(n)
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= lists]
    m = pq_subquantizers(dim)
    out = [Candidate("Flat", "Flat")] if flat else []
    out.append(Candidate("HNSW32", "HNSW", efs))
    if build_sweep:
        for hnsw_m, ef_construction in ((16, 64), (32, 64), (48, 128), (64, 200)):
            out.append(Candidate(f"HNSW{hnsw_m},efConstruction={ef_construction}", "HNSW", efs))
    out.append(Candidate("HNSW32,SQ8", "HNSW+SQ8", efs))
    out.append(Candidate(f"IVF{lists},Flat", "IVF-Flat",
                         tuple({"nprobe": p} for p in probes)))
    out.append(Candidate(f"IVF{lists},PQ{m}x4fs,RFlat", "IVF-PQ+refine",
                         tuple({"nprobe": p, "k_factor": f} for p in probes if p >= 4
                               for f in (2, 4, 8))))
    out.append(Candidate(f"IVF{lists},PQ{max(m // 2, 1)}", "IVF-PQ",
                         tuple({"nprobe": p} for p in probes if p >= 4)))
    if scann:
        leaves = max(16, int(math.sqrt(n)))
        out.append(Candidate(f"ScaNN,leaves={leaves}", "ScaNN",
                             tuple({"leaves": p} for p in probes if p >= 4 and p <= leaves)))
    return out


# -- measuring -------------------------------------------------------------------------------


def sweep(base: np.ndarray, queries: np.ndarray, k: int, candidates: Iterable[Candidate], *,
          threads: int | None = None, latency_queries: int = 300,
          progress: Progress | None = None, keep: Path | None = None) -> list[BenchPoint]:
    """Build each candidate over ``base`` and measure every one of its knob settings.

    With ``keep``, each built index is saved there (with its build time) and loaded instead of
    rebuilt by a later sweep over the same vectors: re-measuring 1M vectors on a quieter machine
    then costs minutes, not an hour of builds.
    """
    say = progress or (lambda _: None)
    threads = threads or os.cpu_count() or 1
    truth = exact_neighbours(base, queries, k)
    points: list[BenchPoint] = []
    for candidate in candidates:
        try:
            index, build_s = _build(candidate.spec, base, threads, keep, say)
        except MissingDependencyError as exc:  # an optional backend (ScaNN) not installed
            say(f"skipped {candidate.spec}: {exc}")
            continue
        built = index.spec.describe
        for knobs in candidate.knob_grid:
            point = _measure(index, queries, truth, k, knobs, threads, latency_queries)
            points.append(BenchPoint(
                candidate.spec, candidate.family, dict(knobs), build_s=build_s,
                memory_bytes=int(index.memory_bytes), vectors=len(base), threads=threads,
                built="" if built == parse_spec(candidate.spec).describe else built, **point))
            say(f"  {points[-1].label}: recall {point['recall']:.3f}, "
                f"{point['qps_single']:,.0f} q/s on one thread")
        del index
    return points


def _build(spec: str, base: np.ndarray, threads: int, keep: Path | None,
           say: Progress) -> tuple[Any, float]:
    from . import build_index, load_index

    parsed = parse_spec(spec)
    saved = keep / f"{len(base)}x{base.shape[1]}-{re.sub(r'[^A-Za-z0-9]+', '_', spec)}.index" \
        if keep else None
    if saved and saved.is_file():
        say(f"loading {spec} from {saved}")
        seconds = json.loads(saved.with_suffix(".json").read_text())["build_s"]
        return load_index(saved, parsed), float(seconds)
    say(f"building {spec} over {len(base):,} vectors")
    sample = base[np.random.default_rng(0).choice(len(base), min(len(base), 160_000),
                                                  replace=False)]
    started = time.perf_counter()
    with omp_threads(threads):
        index = build_index(parsed, base.shape[1], np.arange(len(base), dtype=np.int64), base,
                            train=sample)
    seconds = time.perf_counter() - started
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
        index.save(saved)
        saved.with_suffix(".json").write_text(json.dumps({"build_s": seconds}))
    return index, seconds


class _Measured(TypedDict):
    recall: float
    qps_single: float
    qps_multi: float
    p50_ms: float
    p99_ms: float


def _measure(index: Any, queries: np.ndarray, truth: np.ndarray, k: int, knobs: dict[str, int],
             threads: int, latency_queries: int) -> _Measured:
    # Throughput is the best of three passes: on a shared machine, other load only slows a pass.
    with omp_threads(1):
        index.search(queries[:10], k, **knobs)  # warm caches
        single = math.inf
        for _ in range(3):
            started = time.perf_counter()
            _, found = index.search(queries, k, **knobs)
            single = min(single, time.perf_counter() - started)
        latencies = []
        for query in queries[:latency_queries]:
            began = time.perf_counter()
            index.search(query[None, :], k, **knobs)
            latencies.append(time.perf_counter() - began)
    with omp_threads(threads):
        multi = math.inf
        for _ in range(3):
            started = time.perf_counter()
            index.search(queries, k, **knobs)
            multi = min(multi, time.perf_counter() - started)
    ms = np.asarray(latencies) * 1000.0
    return {"recall": recall_at_k(found, truth), "qps_single": len(queries) / single,
            "qps_multi": len(queries) / multi, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


# -- choosing --------------------------------------------------------------------------------


def recommend(points: Sequence[BenchPoint], target_recall: float,
              max_latency_ms: float | None = None, prefer: str = "speed") -> BenchPoint | None:
    """The cheapest setting that meets the targets, or None.

    ``prefer="speed"``: the most queries/s on one thread (CPU is the cost); ``"memory"``: the
    fewest bytes per vector, then the fastest.
    """
    meeting = [p for p in points if p.meets(target_recall, max_latency_ms) and not p.built]
    if not meeting:
        return None
    if prefer == "memory":
        return min(meeting, key=lambda p: (p.bytes_per_vector, -p.qps_single))
    return max(meeting, key=lambda p: (p.qps_single, -p.bytes_per_vector))


def pareto(points: Sequence[BenchPoint]) -> list[BenchPoint]:
    """The points no other point beats on both recall and single-thread queries/s."""
    return [p for p in points
            if not any(o.recall >= p.recall and o.qps_single > p.qps_single
                       or o.recall > p.recall and o.qps_single >= p.qps_single for o in points)]


# -- reporting -------------------------------------------------------------------------------

COLUMNS = ("label", "family", "recall", "qps_single", "qps_multi", "p50_ms", "p99_ms", "build_s",
           "bytes_per_vector", "memory_bytes", "vectors", "threads", "built")


def save_report(points: Sequence[BenchPoint], folder: Path, *, k: int, target_recall: float,
                recommended: BenchPoint | None, title: str) -> dict[str, Path]:
    """Write ``bench.csv``, ``bench.json`` and ``bench.png`` (recall vs queries/s) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / f"bench.{kind}" for kind in ("csv", "json", "png")}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for point in points:
            row = point.to_dict()
            writer.writerow([row[c] for c in COLUMNS])
    paths["json"].write_text(json.dumps({
        "title": title, "k": k, "target_recall": target_recall,
        "recommended": recommended.to_dict() if recommended else None,
        "points": [p.to_dict() for p in points]}, indent=2) + "\n", encoding="utf-8")
    plot(points, paths["png"], k=k, target_recall=target_recall, recommended=recommended,
         title=title)
    return paths


def plot(points: Sequence[BenchPoint], path: Path, *, k: int, target_recall: float,
         recommended: BenchPoint | None, title: str) -> None:
    """recall@k against single-thread queries/s, one line per index family."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for family in dict.fromkeys(p.family for p in points):
        mine = sorted((p for p in points if p.family == family), key=lambda p: p.recall)
        ax.plot([p.recall for p in mine], [p.qps_single for p in mine], marker="o",
                markersize=3.5, linewidth=1.2, label=family)
    ax.axvline(target_recall, color="grey", linestyle="--", linewidth=1,
               label=f"target recall {target_recall:g}")
    if recommended:
        ax.plot([recommended.recall], [recommended.qps_single], marker="*", markersize=16,
                color="black", linestyle="none", label=f"recommended: {recommended.label}")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{k} against exact search")
    ax.set_ylabel("queries/s, one thread (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
