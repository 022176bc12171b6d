"""Retrieval quality in one table: every registered model, PCA, αQE and DBA, on three sets.

Sets (benchmarks/evalsets.py, all real photos that ship offline, seeded and cached):

* **labelled**: Tux Paint photo stamps and GCompris photo sets, one folder per class;
  leave-one-out mAP, P@1 and R@10 (share of a query's relevant images in its top 10).
* **CD**: copy detection. Distinct GCompris photos as originals, each edited 11 ways (crop,
  rotate, JPEG, colour, grey, blur, scale, flip, text, border, chain of 2-4), searched among the
  originals plus 1,000 distractors from benchmarks/photos.py; R@1, R@10 and mAP.
* **CD-hard**: originals and distractors both from photos-2000, which are crops of 47 source
  photos: the database holds other crops of each query's source, so near-misses are likely.

Search is exact (numpy inner product), so the numbers measure the representation. Embeddings
are cached per model under benchmarks/out/quality/, so PCA/αQE/DBA rows and reruns never
re-embed. "img/s" is the model alone on decoded pixels (batch 32, ONNX Runtime / OpenVINO as the
runtime picks; LOOKALIKE_PRECISION=f32 keeps to f32 where the CPU has bf16), "other load" the CPU
other processes used meanwhile, in cores. The first row is the default pipeline (what
`lookalike search` does); the paired table compares candidates with plain efficientnet-lite0.

    python benchmarks/bench_quality.py [--models efficientnet-lite0,...] [--resnet50-weights F]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import OUT, Meter, log, machine, table
from evalsets import ensure_cd_originals, ensure_distractors, ensure_labelled
from lookalike.embedders import Embedder, embedding_fingerprint, get_model_spec, model_names
from lookalike.evaluation import (
    CopyDetectionSet,
    Embedded,
    LabelledSet,
    Pipeline,
    build_copydetect,
    copydetect_report,
    load_embedder,
    read_labelled,
    score_copydetect,
    score_labelled,
)
from lookalike.imaging import decode_file, load_pixels
from lookalike.settings import resolve
from lookalike.types import Preprocess

CACHE = OUT / "quality"
K = 10


@dataclass(frozen=True)
class Sets:
    labelled: LabelledSet
    cd: CopyDetectionSet
    hard: CopyDetectionSet


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
    return Sets(labelled, cd, hard)


# -- embeddings, cached per model and file ----------------------------------------------------


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def all_paths(sets: Sets) -> list[Path]:
    paths = [*sets.labelled.paths, *sets.cd.database, *(q.path for q in sets.cd.queries),
             *sets.hard.database, *(q.path for q in sets.hard.queries)]
    return list(dict.fromkeys(paths))


def model_input(preprocess: Preprocess, paths: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Decoded model input of every path (one .npy per input geometry, made once; models with
    the same input size share it) and each path's decoding error ("" when it decoded)."""
    digest = hashlib.blake2b("\n".join(map(_key, paths)).encode(), digest_size=8).hexdigest()
    stem = CACHE / f"pixels-{preprocess.size}-{preprocess.resize}-{digest}"
    if not stem.with_suffix(".json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        size = preprocess.size
        pixels = np.lib.format.open_memmap(stem.with_suffix(".tmp.npy"), "w+", np.uint8,
                                           (len(paths), size, size, 3))
        errors = []
        log(f"decoding {len(paths)} images at {size} px")
        with ThreadPoolExecutor(2) as pool:
            for i, done in enumerate(pool.map(
                    lambda p: decode_file(str(p), preprocess, 1 << 28), paths)):
                if done.pixels is not None:
                    pixels[i] = done.pixels
                errors.append("" if done.pixels is not None else done.error or "failed")
        pixels.flush()
        del pixels
        os.replace(stem.with_suffix(".tmp.npy"), stem.with_suffix(".npy"))
        stem.with_suffix(".json").write_text(json.dumps(errors))
    errors = json.loads(stem.with_suffix(".json").read_text())
    return np.load(stem.with_suffix(".npy"), mmap_mode="r"), errors


class VectorCache:
    """Vectors of one model keyed by (path, size, mtime), in one .npz file."""

    def __init__(self, embedder: Embedder) -> None:
        key = embedding_fingerprint(embedder.spec, embedder.weights)
        if "bf16" in embedder.runtime:  # bf16 vectors are compatible, not equal: kept apart
            key += "-bf16"
        self.path = CACHE / f"{key.replace('/', '_').replace(':', '_')}.npz"
        self.embedder = embedder
        self.rows: dict[str, int] = {}
        self.vectors = np.zeros((0, embedder.dim), np.float32)
        self.ok = np.zeros(0, bool)
        self.errors: list[str] = []
        self.info: dict = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                self.rows = {k: i for i, k in enumerate(data["keys"].tolist())}
                self.vectors, self.ok = data["vectors"], data["ok"]
                self.errors = data["errors"].tolist()
                self.info = json.loads(str(data["info"]))

    def fill(self, paths: list[Path]) -> None:
        """Embed the paths not cached yet, from :func:`model_input`'s decoded pixels."""
        keys = [_key(p) for p in paths]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        if not missing:
            return
        pixels, errors = model_input(self.embedder.preprocess, paths)
        vectors = np.zeros((len(missing), self.embedder.dim), np.float32)
        good = [j for j, i in enumerate(missing) if not errors[i]]
        log(f"{self.embedder.name}: embedding {len(good)} images")
        for start in range(0, len(good), 32):
            batch = good[start:start + 32]
            vectors[batch] = self.embedder.embed_pixels(pixels[[missing[j] for j in batch]])
            if start % 1024 == 0 and start:
                log(f"{self.embedder.name}: {start}/{len(good)}")
        first = len(self.vectors)
        self.vectors = np.concatenate([self.vectors, vectors])
        self.ok = np.concatenate([self.ok, [not errors[i] for i in missing]])
        self.errors += [errors[i] for i in missing]
        self.rows.update({keys[i]: first + j for j, i in enumerate(missing)})
        self.save()

    def embedded(self, paths: list[Path]) -> Embedded:
        rows = np.asarray([self.rows[_key(p)] for p in paths], np.int64)
        failed = [(str(p), self.errors[r]) for p, r in zip(paths, rows, strict=True)
                  if not self.ok[r]]
        return Embedded(self.vectors[rows], self.ok[rows], failed, 0.0, 0.0)

    def save(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.rows, key=self.rows.__getitem__)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=np.asarray(keys), vectors=self.vectors, ok=self.ok,
                 errors=np.asarray(self.errors), info=json.dumps(self.info))
        os.replace(tmp, self.path)


def throughput(embedder: Embedder, paths: list[Path]) -> tuple[float, float]:
    """(images/s of the model alone at batch 32, other processes' load in cores)."""
    pixels = np.stack([load_pixels(p, embedder.preprocess, max_pixels=1 << 28) for p in paths])
    embedder.embed_pixels(pixels[:32])  # warm-up
    with Meter() as meter:
        start = time.perf_counter()
        for i in range(0, len(pixels), 32):
            embedder.embed_pixels(pixels[i:i + 32])
        seconds = time.perf_counter() - start
    return len(pixels) / seconds, meter.other_cores


@dataclass
class ModelVectors:
    labelled: Embedded
    cd: tuple[Embedded, Embedded]
    hard: tuple[Embedded, Embedded]
    learning: np.ndarray  # the two CD databases: the labelled set's PCA is learnt from them
    images_per_second: float
    other_cores: float


def embed_model(name: str, weights: str | None, sets: Sets, remeasure: bool) -> ModelVectors:
    embedder = load_embedder(name, weights=weights)  # LOOKALIKE_PRECISION etc. apply
    cache = VectorCache(embedder)
    if remeasure or "images_per_second" not in cache.info:
        speed, other = throughput(embedder, sets.labelled.paths[:128])
        cache.info = {"images_per_second": speed, "other_cores": other}
        cache.save()
    cache.fill(all_paths(sets))
    learning = cache.embedded(list(dict.fromkeys([*sets.cd.database, *sets.hard.database])))
    return ModelVectors(
        labelled=cache.embedded(sets.labelled.paths),
        cd=(cache.embedded(sets.cd.database), cache.embedded([q.path for q in sets.cd.queries])),
        hard=(cache.embedded(sets.hard.database),
              cache.embedded([q.path for q in sets.hard.queries])),
        learning=learning.vectors[learning.ok],
        images_per_second=cache.info["images_per_second"],
        other_cores=cache.info["other_cores"],
    )


# -- scoring ---------------------------------------------------------------------------------


def score(pipeline: Pipeline, vectors: ModelVectors, sets: Sets) -> dict:
    lab = vectors.labelled
    scores, _, _ = score_labelled(lab.vectors[lab.ok], sets.labelled.labels[lab.ok], pipeline,
                                  (1, K), pca_sample=vectors.learning)
    result: dict = {"labelled": scores.summary()}
    for name, dataset, (db, qs) in (("cd", sets.cd, vectors.cd), ("hard", sets.hard, vectors.hard)):
        edits = np.asarray([q.edit for q in dataset.queries])
        originals = np.asarray([q.original for q in dataset.queries])
        result[name] = copydetect_report(dataset, pipeline, db, qs, edits, originals, (1, K))
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
    dims = pipeline.pca or dim
    return [label or pipeline.model, pipeline.steps(), f"{dims} / {dims * 4:,}",
            f"{lab.map:.3f}", f"{lab.precision_at_1:.3f}", f"{lab.recall_at[K]:.3f}",
            f"{cd.recall_at[1]:.3f}", f"{cd.recall_at[K]:.3f}", f"{cd.map:.3f}",
            f"{hard.recall_at[1]:.3f}", f"{hard.recall_at[K]:.3f}", f"{hard.map:.3f}",
            f"{vectors.images_per_second:.1f}", f"{vectors.other_cores:.1f}"]


HEADERS = ["model", "steps", "dims / bytes", "L mAP", "L P@1", f"L R@{K}", "CD R@1",
           f"CD R@{K}", "CD mAP", "hard R@1", f"hard R@{K}", "hard mAP", "img/s", "other load"]


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
CANDIDATES = tuple(dict.fromkeys((  # the default first, once
    DEFAULT, Pipeline("efficientnet-lite0", qe=2), Pipeline("efficientnet-lite0-gem"),
    Pipeline("efficientnet-lite0-gem", qe=2), Pipeline("efficientnet-lite1"),
    Pipeline("efficientnet-lite1-gem", qe=2), Pipeline("efficientnet-lite0", dba=2, qe=2))))


def per_query(pipeline: Pipeline, vectors: ModelVectors, sets: Sets) -> dict[str, np.ndarray]:
    """Per-query labelled AP and copy-detection hits at rank 1, for paired comparisons."""
    lab = vectors.labelled
    out = {"labelled": score_labelled(lab.vectors[lab.ok], sets.labelled.labels[lab.ok],
                                      pipeline, (1,), pca_sample=vectors.learning)[0].ap}
    for name, dataset, (db, qs) in (("cd", sets.cd, vectors.cd), ("hard", sets.hard, vectors.hard)):
        originals = np.asarray([q.original for q in dataset.queries])
        scores = score_copydetect(db.vectors[db.ok], qs.vectors[qs.ok], originals[qs.ok],
                                  pipeline, (1,))[0]
        out[name] = (scores.first_rank == 1).astype(np.float64)
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0) -> str:
    """Mean of b - a with a 95 % paired-bootstrap interval over queries (2,000 resamples)."""
    delta = b - a
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(2000, len(delta)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return f"{delta.mean():+.3f} [{low:+.3f}, {high:+.3f}]"


def candidates_table(by_model: dict[str, ModelVectors], sets: Sets) -> str:
    base = per_query(BASELINE, by_model[BASELINE.model], sets)
    base_speed = by_model[BASELINE.model].images_per_second
    rows = []
    for pipeline in CANDIDATES:
        if pipeline.model not in by_model:
            continue
        vectors = by_model[pipeline.model]
        mine = per_query(pipeline, vectors, sets)
        label = ("default: " if pipeline == DEFAULT else "") + pipeline.describe()
        rows.append([label, *(paired_difference(base[k], mine[k])
                                            for k in ("labelled", "cd", "hard")),
                     f"{base_speed / vectors.images_per_second:.2f}x"])
    return table(["pipeline", "Δ L mAP", "Δ CD R@1", "Δ hard R@1", "embed cost"], rows)


def per_edit_table(label: str, results: dict[str, dict]) -> str:
    names = list(next(iter(results.values()))[label].per_edit)
    rows = [[name] + [f"{r[label].per_edit[e].recall_at[1]:.3f}" for e in names]
            + [f"{r[label].total.recall_at[1]:.3f}"] for name, r in results.items()]
    return table(["pipeline", *names, "all"], rows)


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
            rows.append([name, "needs weights (--resnet50-weights FILE)"] + [""] * 12)
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
            result = score(DEFAULT, vectors, sets)
            rows.insert(0, row(DEFAULT, result, vectors, spec.dim, f"**default**: {name}"))
            per_edit[f"default: {DEFAULT.describe()}"] = result
        log(f"{name}: done ({time.perf_counter() - started:.0f} s)")
    cd, hard = sets.cd, sets.hard
    print(f"## Retrieval quality ({machine()})\n")
    print(f"labelled: {len(sets.labelled.paths)} images in {len(sets.labelled.classes)} classes; "
          f"CD: {len(cd.queries)} queries ({cd.originals} originals x {len(cd.edits)} edits) "
          f"against {len(cd.database)} images; CD-hard: {len(hard.queries)} queries against "
          f"{len(hard.database)} images. Exact search. αQE/DBA: α = 3. PCA is learnt on the "
          "database it searches; for the labelled set (too few images for 512 dimensions) on "
          "the two CD databases' photos.\n")
    print(table(HEADERS, rows))
    if own_pca:
        print("\n### Labelled set, PCA learnt on its own images (a collection of this size)\n")
        print(table(["model", "steps", "L mAP", "L P@1", f"L R@{K}"], own_pca))
    if BASELINE.model in by_model:
        print(f"\n### Against {BASELINE.describe()}: paired differences, 95 % bootstrap "
              "intervals over queries\n")
        print(candidates_table(by_model, sets))
    print("\n### Recall@1 per edit, CD-hard\n")
    print(per_edit_table("hard", per_edit))
    print("\n### Recall@1 per edit, CD\n")
    print(per_edit_table("cd", per_edit))
    log(f"bench_quality: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
