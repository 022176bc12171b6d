"""Learning a collection's invariances (`lookalike learn`), measured the way a user gets it.

On CD-heavy (benchmarks/evalsets.py: real photos, 800 heavily edited copies, half of them chains
of 2-4 edits, searched among the originals and 2,000 distractors; files that show the same
picture count as the right answer), two fresh collections of the database are made with
`Collection.index` (what `lookalike index` runs) and searched with `Collection.search` (default
model, αQE(2), the default index): one with ``learn=False`` (today's default), one that learns
by itself at the end of indexing (the new default). Reported: recall@1 and @10 overall and on
chains, with 95 % paired-bootstrap intervals of the difference; indexing images/s (the ingest,
as `index` prints it), the learning step's seconds, and the command's whole wall time; a search's
mean and p50 latency (decode, embed, project, search, αQE); the load of other processes.

Then, on vectors (exact search, no αQE): how the gain grows with the collection's size (a subset
of originals and distractors, learning from min(1,000, n) of its images, as `learn` would), which
sets `learn_min_images`; and the labelled set (category search) with the projection learnt from
its own images, and from the CD-heavy database's.

    python benchmarks/bench_learn.py [--pairs 1000] [--sizes 250,500,1000,2000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_quality import paired_difference
from cdheavy import ensure_cd_heavy
from common import Meter, machine, table
from evalsets import ensure_labelled
from lookalike import Collection
from lookalike.collection.learning import copy_vectors
from lookalike.evaluation import read_labelled
from lookalike.evaluation.datasets import CopyDetectionSet
from lookalike.index.whitening import LearnedWhitening

K = 10


def pictures(dataset: CopyDetectionSet) -> np.ndarray:
    """The picture each database row shows (rows are their own picture without groups)."""
    return np.asarray(dataset.groups if dataset.groups is not None
                      else range(len(dataset.database)))


def hits_at(dataset: CopyDetectionSet, ranked_rows: list[list[int]]) -> np.ndarray:
    """(queries, K) booleans: whether the hit at each rank shows the query's picture."""
    picture = pictures(dataset)
    out = np.zeros((len(ranked_rows), K), bool)
    for i, (query, rows) in enumerate(zip(dataset.queries, ranked_rows, strict=True)):
        out[i, :len(rows)] = picture[rows] == picture[query.original]
    return out


def through_the_product(dataset: CopyDetectionSet, learn: bool, folder: Path) -> dict:
    """Index the database into a new collection (learning or not), then search every query."""
    row_of = {str(p): i for i, p in enumerate(dataset.database)}
    path = folder / ("learned" if learn else "today")
    with Meter() as meter:
        started = time.perf_counter()
        with Collection.create(path) as col:
            report = col.index(dataset.database, show_progress=False, learn=learn)
        wall = time.perf_counter() - started
    with Collection.open(path) as col:
        col.search(dataset.queries[0].path, k=K)  # warm-up: the model, the index
        ranked, seconds = [], []
        with Meter() as search_meter:
            for query in dataset.queries:
                start = time.perf_counter()
                found = col.search(query.path, k=K)
                seconds.append(time.perf_counter() - start)
                ranked.append([row_of[h.uri] for h in found])
    return {"report": report, "wall": wall, "other": meter.other_cores, "ranked": ranked,
            "hits": hits_at(dataset, ranked), "search_ms": np.asarray(seconds) * 1000,
            "search_other": search_meter.other_cores}


def product_table(dataset: CopyDetectionSet, runs: dict[str, dict]) -> str:
    chains = np.asarray([q.edit == "chain" for q in dataset.queries])
    rows = []
    for name, run in runs.items():
        hits, report = run["hits"], run["report"]
        learned = report.learned
        rows.append([
            name, f"{hits[:, 0].mean():.3f}", f"{hits.any(axis=1).mean():.3f}",
            f"{hits[chains, 0].mean():.3f}", f"{hits[~chains, 0].mean():.3f}",
            f"{report.images_per_second:.1f}",
            f"{learned.seconds:.1f} ({learned.pairs} pairs)" if learned else "-",
            f"{run['wall']:.1f}", f"{run['search_ms'].mean():.1f} / "
            f"{np.percentile(run['search_ms'], 50):.1f}",
            f"{run['other']:.1f} / {run['search_other']:.1f}"])
    return table(["collection", "R@1", f"R@{K}", "chains R@1", "single R@1", "index img/s",
                  "learn s", "index wall s", "search ms mean / p50", "other load idx / search"],
                 rows)


def differences(dataset: CopyDetectionSet, runs: dict[str, dict]) -> str:
    chains = np.asarray([q.edit == "chain" for q in dataset.queries])
    base, new = (run["hits"] for run in runs.values())
    rows = [[what, paired_difference(base[mask, 0].astype(float), new[mask, 0].astype(float)),
             paired_difference(base[mask].any(axis=1).astype(float),
                               new[mask].any(axis=1).astype(float))]
            for what, mask in (("all", np.ones(len(chains), bool)), ("chains", chains),
                               ("single edits", ~chains))]
    return table(["queries", "Δ R@1", f"Δ R@{K}"], rows)


def stored_vectors(col: Collection, paths: list[Path]) -> np.ndarray:
    ids = [col.find(p) for p in paths]
    stored = col.store.vectors([i for i in ids if i is not None])
    return np.stack([stored[i] for i in ids])


def exact_r1(dataset: CopyDetectionSet, database: np.ndarray, queries: np.ndarray,
             rows: np.ndarray, query_mask: np.ndarray) -> float:
    picture = pictures(dataset)[rows]
    best = np.argmax(queries[query_mask] @ database.T, axis=1)
    wanted = pictures(dataset)[[q.original for q, m in zip(dataset.queries, query_mask,
                                                             strict=True) if m]]
    return float(np.mean(picture[best] == wanted))


def size_table(dataset: CopyDetectionSet, col: Collection, sizes: list[int], pairs: int) -> str:
    """R@1 of exact search with and without a projection learnt from a collection of n images
    (a seeded subset of originals and distractors in the set's proportion)."""
    vectors = stored_vectors(col, dataset.database)
    queries = col.embed([q.path for q in dataset.queries])
    made, copies = copy_vectors([str(p) for p in dataset.database], [None] * len(vectors),
                                col.embedder, seed=0, workers=2, max_pixels=1 << 28,
                                max_bytes=1 << 28)
    rng = np.random.default_rng(0)
    share = dataset.originals / len(dataset.database)
    rows = []
    for n in [s for s in sizes if s < len(vectors)] + [len(vectors)]:
        originals = rng.permutation(dataset.originals)[:round(n * share)]
        others = dataset.originals + rng.permutation(len(vectors) - dataset.originals)
        subset = np.sort(np.concatenate([originals, others[:n - len(originals)]]))
        asked = np.isin([q.original for q in dataset.queries], originals)
        learn_from = subset[rng.permutation(len(subset))[:pairs]]
        learn_from = learn_from[made[learn_from]]
        learned = LearnedWhitening.fit(vectors[subset], vectors[learn_from], copies[learn_from])
        plain = exact_r1(dataset, vectors[subset], queries, subset, asked)
        after = exact_r1(dataset, learned.apply(vectors[subset]), learned.apply(queries), subset,
                         asked)
        rows.append([n, int(asked.sum()), len(learn_from), f"{plain:.3f}", f"{after:.3f}",
                     f"{after - plain:+.3f}"])
    return table(["images", "queries", "pairs", "R@1 plain", "R@1 learned", "gain"], rows)


def labelled_map(vectors: np.ndarray, labels: np.ndarray) -> float:
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    aps = []
    for i in range(len(vectors)):
        relevant = labels[np.argsort(-scores[i])[:-1]] == labels[i]
        if relevant.any():
            precision = np.cumsum(relevant) / np.arange(1, len(relevant) + 1)
            aps.append(float((precision * relevant).sum() / relevant.sum()))
    return float(np.mean(aps))


def labelled_table(col: Collection, dataset: CopyDetectionSet, folder: Path) -> str:
    labelled = read_labelled(ensure_labelled())
    own = folder / "labelled"
    with Collection.create(own) as lab:
        lab.index(labelled.paths, show_progress=False, learn=False)
        vectors = stored_vectors(lab, labelled.paths)
        rows = [["none", f"{labelled_map(vectors, labelled.labels):.3f}"]]
        lab.learn(pairs=len(labelled.paths))
        rows.append([f"learnt from its own {len(labelled.paths)} images",
                     f"{labelled_map(lab.live.projection.apply(vectors), labelled.labels):.3f}"])
    cd = col.live.projection
    rows.append([f"learnt from CD-heavy's {len(dataset.database)} images",
                 f"{labelled_map(cd.apply(vectors), labelled.labels):.3f}"])
    return table(["projection", "labelled mAP (exact, no αQE)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="250,500,1000,2000",
                        help="collection sizes for the gain-by-size table")
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    dataset = ensure_cd_heavy()
    folder = Path(tempfile.mkdtemp(prefix="bench-learn-"))
    try:
        runs = {"today (--no-learn)": through_the_product(dataset, False, folder),
                "learns by itself": through_the_product(dataset, True, folder)}
        print(f"## Learning a collection's invariances ({machine()})\n")
        chains = sum(q.edit == "chain" for q in dataset.queries)
        print(f"CD-heavy: {len(dataset.queries)} queries ({chains} chains of 2-4 edits) against "
              f"{len(dataset.database)} images, through `Collection.index` and "
              "`Collection.search` (default model, αQE(2)).\n")
        print(product_table(dataset, runs))
        print("\n### Learned against today: paired differences, 95 % bootstrap intervals\n")
        print(differences(dataset, runs))
        with Collection.open(folder / "learned") as col:
            print("\n### Gain by collection size (exact search, no αQE)\n")
            print(size_table(dataset, col, [int(s) for s in args.sizes.split(",")],
                             args.pairs))
            print("\n### Category search: the labelled set\n")
            print(labelled_table(col, dataset, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
