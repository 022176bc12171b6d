"""Search labels as a user meets them: how often each hit's ``match`` label is right.

Each model's collection of the Dup set (benchmarks/dupset.py: real photos, their self-made
exact, NEAR, STANDARD and HEAVY copies, same-scene pictures and photos-2000, indexed by
calibrate_dedup.py under the set's ``collections`` folder) is copied to a temporary folder, so
that searching it never writes to the cache, and every image of the held-out half asks
``col.search_similar(id, k=10, qe=0)``: the hits a user sees, each labelled ``exact`` (the same
bytes), ``copy``, ``similar`` or none by the model's cosine-only thresholds
(src/lookalike/thresholds.json, chosen on the calibration half).

A hit is scored when its pair (query, hit) belongs to the held-out half by dupset.split's rule:
both files held out, or, for a query beside a calibration file (unrelated, or one scene across
two pictures), the query has the smaller seeded key; the pairs the thresholds were chosen on are
never scored. Copies (exact and near pairs) never cross halves. The truth's ``unsure`` pairs
(photos-2000 crops overlapping by an IoU of 0.3-0.5) are neither right nor wrong.

Precision: ``exact``, the share of hits with the query's bytes (files hashed here, not by the
product); ``copy``, the share that are exact or near copies in truth; ``similar``, copies or the
same scene. For each label, also the share that are in truth copies (for no label: the copies
the labels miss) and related (copies or the same scene). Recall, among the pairs that reached a
top 10: same bytes labelled ``exact``; copies labelled ``copy`` or ``exact``; related pairs
labelled at all. Then, per edit kind, the share of the copies in a top 10 labelled a copy.

    python benchmarks/bench_labels.py [--models efficientnet-lite0-gem,...] [--k 10]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import Meter, log, machine, percentile_ms, table
from dupset import FOLDER, ensure_dupset, split
from lookalike import Collection
from lookalike.thresholds import thresholds_for

MODELS = ("efficientnet-lite0-gem", "efficientnet-lite0", "efficientnet-lite1-gem",
          "efficientnet-lite1", "efficientnet-lite2-gem", "efficientnet-lite2")
HELD_OUT = 1
LABELS = ("exact", "copy", "similar", None)
COPY_TIERS = ("exact", "near")
RELATED_TIERS = ("exact", "near", "similar")
KINDS = ("bytes", "exif", "png", "jpeg", "scale", "crop", "colour", "grey", "text", "border",
         "rotate", "blur", "flip", "chain")


@dataclass
class Truth:
    """The set's pairs as the benchmark reads them."""

    files: list[dict]
    half: np.ndarray
    key: np.ndarray
    pairs: dict[tuple[int, int], tuple[str, str]]  # (i < j) -> (tier, recipe)
    same_bytes: set[tuple[int, int]]

    def pair(self, i: int, j: int) -> tuple[str, str]:
        """(tier, recipe) of two files; ("unrelated", "") when the truth has no pair."""
        return self.pairs.get((min(i, j), max(i, j)), ("unrelated", ""))

    def scored(self, i: int, j: int) -> bool:
        """Whether the pair belongs to the held-out half (see dupset.split)."""
        owner = self.half[i] if self.half[i] == self.half[j] or self.key[i] < self.key[j] \
            else self.half[j]
        return int(owner) == HELD_OUT


def read_truth(images: Path, truth: dict, seed: int = 0) -> Truth:
    half, key = split(truth, seed)
    pairs = {(i, j): (tier, recipe) for i, j, tier, recipe in truth["pairs"]}
    by_size: dict[int, list[int]] = defaultdict(list)
    for n, f in enumerate(truth["files"]):
        by_size[(images / f["path"]).stat().st_size].append(n)
    by_digest: dict[str, list[int]] = defaultdict(list)
    for rows in by_size.values():
        for n in rows if len(rows) > 1 else ():
            digest = hashlib.sha256((images / truth["files"][n]["path"]).read_bytes())
            by_digest[digest.hexdigest()].append(n)
    same = {(i, j) for rows in by_digest.values() for x, i in enumerate(rows) for j in rows[x + 1:]}
    return Truth(truth["files"], half, key, pairs, same)


@dataclass
class Found:
    """Every (query, hit) a model's searches returned, as rows of the truth's files."""

    model: str
    hits: list[tuple[int, int, str | None]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    other_cores: float = 0.0


def collection_of(model: str, images: Path, paths: list[str]) -> Path:
    """The set's collection for ``model``, indexed (as calibrate_dedup.py does) if missing."""
    folder = FOLDER / "collections" / model
    if not (folder / "manifest.json").is_file():
        from calibrate_dedup import embed

        log(f"{model}: no collection of the Dup set yet; indexing it (~30 s)")
        embed(model, images, paths)
    return folder


def search(model: str, images: Path, truth: Truth, k: int) -> Found:
    paths = [os.path.abspath(images / f["path"]) for f in truth.files]
    source = collection_of(model, images, [f["path"] for f in truth.files])
    found = Found(model)
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        copy = shutil.copytree(source, Path(tmp) / model)
        with Collection.open(copy, model=model) as col:
            rows = col.store.live_rows(paths)
            if len(rows) != len(paths):
                raise SystemExit(f"bench_labels: {model}'s collection of the Dup set lacks "
                                 f"{len(paths) - len(rows)} files: run "
                                 f"benchmarks/calibrate_dedup.py --models {model}")
            row_of = {rows[p].id: n for n, p in enumerate(paths)}
            queries = [rows[p].id for n, p in enumerate(paths) if truth.half[n] == HELD_OUT]
            col.search_similar(queries[0], k=k, qe=0)  # warm up: index and model files read
            with Meter() as meter:
                for image_id in queries:
                    started = time.perf_counter()
                    hits = col.search_similar(image_id, k=k, qe=0)
                    found.seconds.append(time.perf_counter() - started)
                    found.hits += [(row_of[image_id], row_of[h.image_id], h.match) for h in hits]
            found.other_cores = meter.other_cores
    return found


def share(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "-"


def label_rows(found: Found, truth: Truth, real_only: bool) -> list[list[str]]:
    """Per label: hits, scored hits, precision, copies and related among them, recall; of the
    queries that are real photos or their self-made copies only with ``real_only``."""
    counts: Counter[str | None] = Counter()
    scored: dict[str | None, list[tuple[str, bool]]] = defaultdict(list)  # (tier, same bytes)
    for q, h, match in found.hits:
        if real_only and truth.files[q]["recipe"] == "p2000":
            continue
        counts[match] += 1
        tier = truth.pair(q, h)[0]
        if truth.scored(q, h) and tier != "unsure":
            scored[match].append((tier, (min(q, h), max(q, h)) in truth.same_bytes))
    every = [(m, t, b) for m, pairs in scored.items() for t, b in pairs]
    recall = {  # of the pairs in a top k: (wanted, labelled so)
        "exact": [m == "exact" for m, _, same in every if same],
        "copy": [m in ("exact", "copy") for m, t, _ in every if t in COPY_TIERS],
        "similar": [m is not None for m, t, _ in every if t in RELATED_TIERS]}
    rows = []
    for label in LABELS:
        mine = scored[label]
        right = {"exact": sum(same for _, same in mine),
                 "copy": sum(t in COPY_TIERS for t, _ in mine),
                 "similar": sum(t in RELATED_TIERS for t, _ in mine)}
        wanted = recall.get(label or "")
        rows.append([found.model, "real" if real_only else "all", label or "(none)",
                     f"{counts[label]:,}", f"{len(mine):,}",
                     share(right[label], len(mine)) if label else "-",
                     share(sum(t in COPY_TIERS for t, _ in mine), len(mine)),
                     share(sum(t in RELATED_TIERS for t, _ in mine), len(mine)),
                     f"{share(sum(wanted), len(wanted))} of {len(wanted):,}" if wanted else "-"])
    return rows


def kind_rows(found: Found, truth: Truth) -> tuple[list[list[str]], list[str]]:
    """Per copy family and edit kind: the share of the copies in a top k labelled a copy; and
    the same for the copies no single edit made (two copies, the packages' own, crops)."""
    labelled: dict[str, list[bool]] = defaultdict(list)
    for q, h, match in found.hits:
        tier, recipe = truth.pair(q, h)
        if tier in COPY_TIERS and truth.scored(q, h):
            name = recipe.split(":")[0] + ":*" if recipe.startswith("copies:") else recipe
            labelled[name].append(match in ("exact", "copy"))
            labelled[name.split(":")[0] + ":all"].append(match in ("exact", "copy"))
    rows = []
    for family in ("exact", "near", "standard", "heavy"):
        rows.append([found.model, family, *(
            f"{np.mean(labelled[f'{family}:{k}']):.2f}" if labelled[f"{family}:{k}"] else ""
            for k in (*KINDS, "all"))])
    others = [f"{np.mean(labelled[k]):.2f} of {len(labelled[k])}" if labelled[k] else "-"
              for k in ("copies:*", "package-copy", "p2000-crop")]
    return rows, [found.model, *others]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated; default: every model "
                        "with a collection of the Dup set (the default model's built if missing)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    images, raw = ensure_dupset()
    models = (args.models.split(",") if args.models else
              [MODELS[0], *(m for m in MODELS[1:]
                            if (FOLDER / "collections" / m / "manifest.json").is_file())])
    truth = read_truth(images, raw)
    load_before = load()
    results = []
    for model in models:
        log(f"{model}: {int((truth.half == HELD_OUT).sum()):,} queries")
        results.append(search(model, images, truth, args.k))
    print(f"# Search labels on the Dup set's held-out half\n\n{machine()}; load average "
          f"{load_before} before, {load()} after\n")
    print(f"Every held-out image ({int((truth.half == HELD_OUT).sum()):,}) queries "
          f"`search_similar(id, k={args.k}, qe=0)` among all {len(truth.files):,} files; scored: "
          "the hits whose pair belongs to the held-out half, `unsure` pairs left out. "
          "Precision: `exact`, same bytes; `copy`, an exact or near copy in truth; `similar`, a "
          "copy or the same scene. Copies / related: the share of the label's scored hits that "
          "are copies / copies or the same scene (for no label, the copies the labels miss). "
          "Recall, of the pairs in a top 10: same bytes labelled `exact`; copies labelled "
          "`copy` or `exact`; related pairs labelled at all.\n")
    rows = [row for found in results for real in (False, True)
            for row in label_rows(found, truth, real)]
    print(table(["model", "queries", "label", "hits", "scored", "precision", "copies", "related",
                 "recall"], rows) + "\n")
    print("Thresholds (cosine): " + "; ".join(
        f"{m}: copy >= {t.near.threshold:.3f}, similar >= {t.similar.threshold:.3f}"
        for m in models for t in [thresholds_for(m, verify=False)]) + "\n")
    print(table(["model", "queries/s", "p50 ms", "p99 ms", "other load (cores)"], [
        [f.model, f"{len(f.seconds) / sum(f.seconds):,.0f}", f"{percentile_ms(f.seconds, 50):.2f}",
         f"{percentile_ms(f.seconds, 99):.2f}", f"{f.other_cores:.2f}"] for f in results]) + "\n")
    print("Copies in a top 10 labelled `copy` or `exact`, per recipe and edit kind (pairs of a "
          "copy and its original):\n")
    kinds = [kind_rows(found, truth) for found in results]
    print(table(["model", "recipe", *KINDS, "all"], [r for rs, _ in kinds for r in rs]) + "\n")
    print("The same for the other copy pairs: two copies of one original, the packages' own "
          "copies (resized, recoloured, mirrored), photos-2000 crops of one wallpaper overlapping "
          "by an IoU >= 0.5:\n")
    print(table(["model", "two copies", "package copies", "photos-2000 crops"],
                [other for _, other in kinds]))


if __name__ == "__main__":
    main()
