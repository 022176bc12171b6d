"""Retrieval quality in one table: every registered model, PCA, αQE and DBA, on four sets.

Sets (benchmarks/evalsets.py, all real photos that ship offline, seeded and cached):

* **labelled**: Tux Paint photo stamps and GCompris photo sets, one folder per class;
  leave-one-out mAP, P@1 and R@10 (share of a query's relevant images in its top 10).
* **CD**: copy detection. Distinct GCompris photos as originals, each edited 11 ways (crop,
  rotate, JPEG, colour, grey, blur, scale, flip, text, border, chain of 2-4), searched among the
  originals plus 1,000 distractors from benchmarks/photos.py; R@1, R@10 and mAP.
* **CD-hard**: originals and distractors both from photos-2000, which are crops of 47 source
  photos: the database holds other crops of each query's source, so near-misses are likely.
* **CD-heavy** (benchmarks/cdheavy.py): every real photo of GCompris, Tux Paint and OpenCV's
  samples as an original, each copied twice with heavy edits (one single edit, one chain of
  2-4), among 2,000 distractors that include heavy copies of other photos; any file showing the
  original's picture counts as found. R@1, R@10 and R@1 of the chained copies.

Search is exact (numpy inner product), so the numbers measure the representation. Embeddings
are cached per model under benchmarks/out/quality/, so PCA/αQE/DBA rows and reruns never
re-embed. "img/s" is the model alone on decoded pixels (batch 32, ONNX Runtime / OpenVINO as the
runtime picks; LOOKALIKE_PRECISION=f32 keeps to f32 where the CPU has bf16), "other load" the CPU
other processes used meanwhile, in cores. The first rows are the default pipeline (what
`lookalike search` does) with the learned whitening a collection of 1,000 images or more learns
by itself (`lookalike learn`, fitted on each set's database and edited copies of 1,000 of its
images; for the labelled set, CD-heavy's), and without it; the paired tables compare them, and
candidates with plain efficientnet-lite0.

    python benchmarks/bench_quality.py [--models efficientnet-lite0,...] [--resnet50-weights F]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdheavy import composition
from common import OUT, log, machine, table
from evalsets import ensure_cd_heavy, ensure_cd_originals, ensure_distractors, ensure_labelled
from lookalike.embedders import get_model_spec, model_names
from lookalike.evaluation import (
    CopyDetectionSet,
    Embedded,
    LabelledSet,
    Pipeline,
    build_copydetect,
    copydetect_report,
    copydetect_scores,
    learn_projection,
    load_embedder,
    read_labelled,
    score_labelled,
)
from lookalike.index import Projection
from lookalike.settings import resolve
from quality_vectors import VectorCache, throughput

K = 10
COPY_SETS = ("cd", "hard", "heavy")  # the copy-detection sets, by their key in Sets


@dataclass(frozen=True)
class Sets:
    labelled: LabelledSet
    cd: CopyDetectionSet
    hard: CopyDetectionSet
    heavy: CopyDetectionSet

    def copy(self, name: str) -> CopyDetectionSet:
        dataset: CopyDetectionSet = getattr(self, name)
        return dataset


def build_sets(args: argparse.Namespace) -> Sets:
    labelled = read_labelled(ensure_labelled(args.seed))
    distractors = ensure_distractors()
    originals = ensure_cd_originals()

    def progress(name: str):  # noqa: ANN202
        return lambda done, total: done % 50 == 0 and log(f"{name}: {done}/{total} originals")

    if originals is None:
        log("bench_quality: no GCompris photos; the CD set uses photos-2000 for originals too")
        originals = distractors
    count = min(args.cd_originals, len(list(originals.glob("*.jpg"))))
    cd = build_copydetect(
        originals, OUT / "evalsets" / f"cd-{count}-{args.distractors}-s{args.seed}",
        originals=count, distractors=args.distractors, seed=args.seed,
        distractors_from=distractors, progress=progress("CD"))
    hard = build_copydetect(
        distractors, OUT / "evalsets" / f"cd-hard-{args.hard_originals}-{args.distractors}"
        f"-s{args.seed}", originals=args.hard_originals, distractors=args.distractors,
        seed=args.seed, progress=progress("CD-hard"))
    return Sets(labelled, cd, hard, ensure_cd_heavy(args.seed))


def all_paths(sets: Sets) -> list[Path]:
    paths = list(sets.labelled.paths)
    for name in COPY_SETS:
        paths += [*sets.copy(name).database, *(q.path for q in sets.copy(name).queries)]
    return list(dict.fromkeys(paths))


@dataclass
class ModelVectors:
    labelled: Embedded
    copies: dict[str, tuple[Embedded, Embedded]]  # (database, queries) of each COPY_SETS set
    learning: np.ndarray  # the CD and CD-hard databases: the labelled set's PCA is learnt there
    images_per_second: float
    other_cores: float
    #: Learned whitening of each copy-detection set's database (the default model only); the
    #: labelled set uses CD-heavy's.
    learned: dict[str, Projection] = dataclasses.field(default_factory=dict)


def embed_model(name: str, weights: str | None, sets: Sets, remeasure: bool) -> ModelVectors:
    embedder = load_embedder(name, weights=weights)  # LOOKALIKE_PRECISION etc. apply
    cache = VectorCache(embedder)
    if remeasure or "images_per_second" not in cache.info:
        speed, other = throughput(embedder, sets.labelled.paths[:128])
        cache.info = {"images_per_second": speed, "other_cores": other}
        cache.save()
    cache.fill(all_paths(sets))
    learning = cache.embedded(list(dict.fromkeys([*sets.cd.database, *sets.hard.database])))
    copies = {name: (cache.embedded(sets.copy(name).database),
                     cache.embedded([q.path for q in sets.copy(name).queries]))
              for name in COPY_SETS}
    learned = {}
    if name == DEFAULT.model:
        log(f"{name}: learning each copy-detection database's whitening")
        learned = {set_name: learn_projection(sets.copy(set_name).database, copies[set_name][0],
                                              embedder) for set_name in COPY_SETS}
    return ModelVectors(
        labelled=cache.embedded(sets.labelled.paths),
        copies=copies, learning=learning.vectors[learning.ok],
        images_per_second=cache.info["images_per_second"],
        other_cores=cache.info["other_cores"], learned=learned,
    )


# -- scoring ---------------------------------------------------------------------------------


def projection(pipeline: Pipeline, vectors: ModelVectors, name: str) -> Projection | None:
    """The learned whitening a pipeline with ``learn`` searches set ``name`` with."""
    return vectors.learned["heavy" if name == "labelled" else name] if pipeline.learn else None


def score(pipeline: Pipeline, vectors: ModelVectors, sets: Sets) -> dict:
    lab = vectors.labelled
    scores, _, _ = score_labelled(lab.vectors[lab.ok], sets.labelled.labels[lab.ok], pipeline,
                                  (1, K), pca_sample=vectors.learning,
                                  projection=projection(pipeline, vectors, "labelled"))
    result: dict = {"labelled": scores.summary()}
    for name in COPY_SETS:
        result[name] = copydetect_report(sets.copy(name), pipeline, *vectors.copies[name], (1, K),
                                         projection(pipeline, vectors, name))
    return result


def post_pipelines(model: str) -> list[Pipeline]:
    """The retrieval steps measured on top of a base model."""
    rows = [Pipeline(model, pca=d, whiten=w) for d in (128, 256, 512) for w in (False, True)]
    rows += [Pipeline(model, qe=n) for n in (2, 5)]
    rows += [Pipeline(model, dba=n) for n in (2, 5)]
    rows += [Pipeline(model, dba=2, qe=2), Pipeline(model, pca=256, whiten=True, dba=2, qe=2)]
    return rows


def row(pipeline: Pipeline, result: dict, vectors: ModelVectors, dim: int,
        label: str = "") -> list[str]:
    lab, cd, hard = result["labelled"], result["cd"].total, result["hard"].total
    heavy, chained = result["heavy"].total, result["heavy"].per_edit["chain"]
    dims = pipeline.pca or dim
    return [label or pipeline.model, pipeline.steps(), f"{dims} / {dims * 4:,}",
            f"{lab.map:.3f}", f"{lab.precision_at_1:.3f}", f"{lab.recall_at[K]:.3f}",
            f"{cd.recall_at[1]:.3f}", f"{cd.recall_at[K]:.3f}", f"{cd.map:.3f}",
            f"{hard.recall_at[1]:.3f}", f"{hard.recall_at[K]:.3f}", f"{hard.map:.3f}",
            f"{heavy.recall_at[1]:.3f}", f"{heavy.recall_at[K]:.3f}",
            f"{chained.recall_at[1]:.3f}",
            f"{vectors.images_per_second:.1f}", f"{vectors.other_cores:.1f}"]


HEADERS = ["model", "steps", "dims / bytes", "L mAP", "L P@1", f"L R@{K}", "CD R@1",
           f"CD R@{K}", "CD mAP", "hard R@1", f"hard R@{K}", "hard mAP", "heavy R@1",
           f"heavy R@{K}", "heavy chain R@1", "img/s", "other load"]


def small_sample_pca(model: str, vectors: ModelVectors, sets: Sets) -> list[list[str]]:
    """Labelled-set rows with the PCA learnt from the labelled images themselves, as
    `lookalike reduce` would learn it on a collection of that size."""
    lab = vectors.labelled
    rows = []
    for dim in (128, 256):
        for whiten in (False, True):
            pipeline = Pipeline(model, pca=dim, whiten=whiten)
            summary = score_labelled(lab.vectors[lab.ok], sets.labelled.labels[lab.ok],
                                     pipeline, (1, K))[0].summary()
            rows.append([model, pipeline.steps(), f"{summary.map:.3f}",
                         f"{summary.precision_at_1:.3f}", f"{summary.recall_at[K]:.3f}"])
    return rows


BASELINE = Pipeline("efficientnet-lite0")
#: What `lookalike search` does with its default settings.
DEFAULT = Pipeline(resolve("model"), qe=resolve("query_expansion"),
                   qe_alpha=resolve("query_expansion_alpha"))
#: ... and what it does in a collection that has learned its invariances (`lookalike learn`).
LEARNED = dataclasses.replace(DEFAULT, learn=True)
CANDIDATES = tuple(dict.fromkeys((  # the defaults first, once
    LEARNED, DEFAULT, Pipeline("efficientnet-lite0", qe=2), Pipeline("efficientnet-lite0-gem"),
    Pipeline("efficientnet-lite0-gem", qe=2), Pipeline("efficientnet-lite1"),
    Pipeline("efficientnet-lite1-gem", qe=2), Pipeline("efficientnet-lite0", dba=2, qe=2))))


def per_query(pipeline: Pipeline, vectors: ModelVectors, sets: Sets) -> dict[str, np.ndarray]:
    """Per-query labelled AP and copy-detection hits at rank 1, for paired comparisons."""
    lab = vectors.labelled
    out = {"labelled": score_labelled(lab.vectors[lab.ok], sets.labelled.labels[lab.ok],
                                      pipeline, (1,), pca_sample=vectors.learning,
                                      projection=projection(pipeline, vectors, "labelled"))[0].ap}
    for name in COPY_SETS:
        scores = copydetect_scores(sets.copy(name), pipeline, *vectors.copies[name], (1,),
                                   projection(pipeline, vectors, name))[0]
        out[name] = (scores.first_rank == 1).astype(np.float64)
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> str:
    """Mean of b - a with a 95 % paired-bootstrap interval over queries (2,000 resamples)."""
    delta = b - a
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(2000, len(delta)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return f"{delta.mean():+.3f} [{low:+.3f}, {high:+.3f}]"


def learned_table(vectors: ModelVectors, sets: Sets) -> str:
    """The learned default against today's default, per query, with chains apart."""
    base, mine = per_query(DEFAULT, vectors, sets), per_query(LEARNED, vectors, sets)
    chained = np.asarray([q.edit == "chain" for q in sets.heavy.queries])
    rows = [[name, paired_difference(base[name], mine[name])]
            for name in ("labelled", *COPY_SETS)]
    rows.append(["heavy, chains", paired_difference(base["heavy"][chained],
                                                    mine["heavy"][chained])])
    return table(["set", "Δ (L: mAP, others: R@1)"], rows)


def candidates_table(by_model: dict[str, ModelVectors], sets: Sets) -> str:
    base = per_query(BASELINE, by_model[BASELINE.model], sets)
    base_speed = by_model[BASELINE.model].images_per_second
    rows = []
    for pipeline in CANDIDATES:
        if pipeline.model not in by_model:
            continue
        vectors = by_model[pipeline.model]
        mine = per_query(pipeline, vectors, sets)
        label = {DEFAULT: "default: ", LEARNED: "default, learned: "}.get(pipeline, "")
        label += pipeline.describe()
        rows.append([label, *(paired_difference(base[k], mine[k])
                              for k in ("labelled", *COPY_SETS)),
                     f"{base_speed / vectors.images_per_second:.2f}x"])
    return table(["pipeline", "Δ L mAP", "Δ CD R@1", "Δ hard R@1", "Δ heavy R@1", "embed cost"],
                 rows)


def per_edit_table(label: str, results: dict[str, dict]) -> str:
    names = list(next(iter(results.values()))[label].per_edit)
    rows = [[name] + [f"{r[label].per_edit[e].recall_at[1]:.3f}" for e in names]
            + [f"{r[label].total.recall_at[1]:.3f}"] for name, r in results.items()]
    return table(["pipeline", *names, "all"], rows)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {what}" for what, n in counts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated models (default: every registered)")
    parser.add_argument("--post-on", default="efficientnet-lite0",
                        help="models to measure PCA/αQE/DBA rows on (comma-separated)")
    parser.add_argument("--resnet50-weights", help="a ResNet-50 weights file for resnet50*")
    parser.add_argument("--cd-originals", type=int, default=100)
    parser.add_argument("--hard-originals", type=int, default=200)
    parser.add_argument("--distractors", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--remeasure", action="store_true",
                        help="measure images/s again (cached vectors are still used)")
    args = parser.parse_args()
    started = time.perf_counter()
    sets = build_sets(args)
    names = args.models.split(",") if args.models else model_names()
    post_on = [m for m in args.post_on.split(",") if m in names]
    rows, per_edit, own_pca, by_model = [], {}, [], {}
    for name in names:
        spec = get_model_spec(name)
        weights = args.resnet50_weights if spec.needs_weights_file else None
        if spec.needs_weights_file and not weights:
            rows.append([name, "needs weights (--resnet50-weights FILE)"]
                        + [""] * (len(HEADERS) - 2))
            continue
        vectors = by_model[name] = embed_model(name, weights, sets, args.remeasure)
        pipelines = [Pipeline(name)] + (post_pipelines(name) if name in post_on else [])
        if name in post_on:
            own_pca += small_sample_pca(name, vectors, sets)
        for pipeline in pipelines:
            result = score(pipeline, vectors, sets)
            rows.append(row(pipeline, result, vectors, spec.dim))
            if pipeline.steps() == "plain" or pipeline in pipelines[-1:]:
                per_edit[pipeline.describe()] = result
        if name == DEFAULT.model:
            for at, (pipeline, label) in enumerate(((LEARNED, "**default, learned**"),
                                                     (DEFAULT, "**default**"))):
                result = score(pipeline, vectors, sets)
                rows.insert(at, row(pipeline, result, vectors, spec.dim, f"{label}: {name}"))
                per_edit[f"{label.strip('*')}: {pipeline.describe()}"] = result
        log(f"{name}: done ({time.perf_counter() - started:.0f} s)")
    cd, hard, heavy = sets.cd, sets.hard, sets.heavy
    made_of = composition()
    print(f"## Retrieval quality ({machine()})\n")
    print(f"labelled: {len(sets.labelled.paths)} images in {len(sets.labelled.classes)} classes; "
          f"CD: {len(cd.queries)} queries ({cd.originals} originals x {len(cd.edits)} edits) "
          f"against {len(cd.database)} images; CD-hard: {len(hard.queries)} queries against "
          f"{len(hard.database)} images; CD-heavy: {len(heavy.queries)} queries (one single "
          f"edit and one chain per original; originals: {_counts(made_of['originals'])}) "
          f"against {len(heavy.database)} images in {len(set(heavy.groups or ()))} "
          f"same-picture groups ({made_of['pictures']} real pictures; distractors: "
          f"{_counts(made_of['distractors'])}). Exact search. "
          "αQE/DBA: α = 3. PCA is learnt on the database it searches; for the labelled set "
          "(too few images for 512 dimensions) on the CD and CD-hard databases' photos.\n")
    print(table(HEADERS, rows))
    if own_pca:
        print("\n### Labelled set, PCA learnt on its own images (a collection of this size)\n")
        print(table(["model", "steps", "L mAP", "L P@1", f"L R@{K}"], own_pca))
    if DEFAULT.model in by_model:
        print("\n### Learned whitening against today's default: paired differences, 95 % "
              "bootstrap intervals over queries\n")
        print(learned_table(by_model[DEFAULT.model], sets))
    if BASELINE.model in by_model:
        print(f"\n### Against {BASELINE.describe()}: paired differences, 95 % bootstrap "
              "intervals over queries\n")
        print(candidates_table(by_model, sets))
    print("\n### Recall@1 per edit, CD-heavy (chain: 2-4 heavy edits)\n")
    print(per_edit_table("heavy", per_edit))
    print("\n### Recall@1 per edit, CD-hard\n")
    print(per_edit_table("hard", per_edit))
    print("\n### Recall@1 per edit, CD\n")
    print(per_edit_table("cd", per_edit))
    log(f"bench_quality: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
