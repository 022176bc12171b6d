"""Duplicates at scale and on real photos: `lookalike dedup` measured.

1. **1,000,000 synthetic vectors** (1,280 dimensions, the default model's; clustered on a
   low-rank subspace like CNN embeddings) with planted pairs at known cosines: exact copies (the
   same vector and content hash), near copies at cosines from the cosine-only ``normal`` near
   threshold to 0.995, and look-alikes just under it (which must not be grouped as near). They
   are written to a collection's store (what indexing leaves there: the vectors are already
   indexed), then a fresh process runs ``find_duplicates(verify=False)`` (`lookalike dedup
   --no-verify`: synthetic vectors have no pixels to check) on it. Reported: wall time, peak
   memory of that process, recall of the planted exact and near pairs (both images in one
   group), and how many grouped pairs were not planted.
2. **Real photos** with self-made copies among distractors (benchmarks/dupset.py): precision and
   recall of the pairs each tier and preset groups, on the set's held-out half.

    python benchmarks/bench_dedup.py [--n 1000000] [--planted 10000] [--keep] [--skip-real]
                                     [--skip-synthetic] [--presets strict,normal,loose]

``--keep`` keeps the synthetic collection under benchmarks/out/dedup-<n> and reuses it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import OUT, Meter, child_spec, log, machine, mib, reply, run_child, table
from lookalike import Collection
from lookalike.dedup import find_duplicates, thresholds_for
from lookalike.index import tuning
from lookalike.storage import NewImage

MODEL = "efficientnet-lite0-gem"
DIM = 1280
CHUNK = 20_000


def planted_pairs(n: int, planted: int, near: float, similar: float, seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Rows (a, b) of each kind of planted pair and the cosine planted: a fifth exact, three
    fifths near, a fifth similar (between the similar and near thresholds)."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n)[:2 * planted].reshape(planted, 2)
    kinds = np.repeat(["exact", "near", "near", "near", "similar"], -(-planted // 5))[:planted]
    cosine = np.where(kinds == "exact", 1.0,
                      np.where(kinds == "near", rng.uniform(near + 0.005, 0.995, planted),
                               rng.uniform(similar + 0.01, near - 0.01, planted)))
    return {"a": rows[:, 0], "b": rows[:, 1], "kind": kinds, "cosine": cosine}


def build(folder: Path, n: int, plan: dict[str, np.ndarray], seed: int = 0) -> None:
    """A collection whose store holds ``n`` clustered vectors with the planted copies."""
    copy_of = dict(zip(plan["b"].tolist(), zip(plan["a"].tolist(), plan["cosine"].tolist(),
                                               strict=True), strict=True))
    with Collection.create(folder, model=MODEL, index="Flat") as col:
        rng = np.random.default_rng(seed + 1)
        vectors = np.empty((n, DIM), np.float32)
        for start in range(0, n, 200_000):
            vectors[start:start + 200_000] = tuning.clustered_vectors(
                min(200_000, n - start), DIM, seed=seed + start, clusters=int(n ** 0.5))
        for b, (a, cosine) in copy_of.items():
            noise = rng.standard_normal(DIM).astype(np.float32)
            noise = 0.5 * noise / np.linalg.norm(noise) + 0.5 * vectors[rng.integers(n)]
            noise -= (noise @ vectors[a]) * vectors[a]
            noise /= np.linalg.norm(noise)
            vectors[b] = cosine * vectors[a] + np.sqrt(max(0.0, 1 - cosine ** 2)) * noise
        digest = {b: f"{a:032x}" for b, (a, cosine) in copy_of.items() if cosine == 1.0}
        for start in range(0, n, CHUNK):
            col.store.write(
                NewImage(f"/synthetic/{i:07d}.jpg", 100_000 + i % 977, 1_700_000_000 + i,
                         digest.get(i, f"{i:032x}"), 1024, 768, vectors[i])
                for i in range(start, min(start + CHUNK, n)))
            if start % 200_000 == 0:
                log(f"  stored {start + CHUNK:,} vectors")


def child(spec: dict) -> None:
    with Collection.open(spec["folder"]) as col, Meter() as meter:
        started = time.perf_counter()
        report = find_duplicates(col, tier="near", verify=False, show_progress=False)
        seconds = time.perf_counter() - started
    grouped = [[g.keep.image_id, *(m.image_id for m in g.members)] for g in report.groups]
    reply({"seconds": seconds, "peak": meter.self_peak, "other": meter.other_cores,
           "images": report.images, "pairs": report.pairs, "groups": grouped})


def synthetic(n: int, planted: int, keep: bool) -> str:
    thresholds = thresholds_for(MODEL, verify=False)  # no pixels to check: the cosine alone
    plan = planted_pairs(n, planted, thresholds.near.threshold, thresholds.similar.threshold)
    folder = OUT / f"dedup-{n}"
    if not (keep and (folder / "manifest.json").is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        log(f"writing {n:,} vectors with {planted:,} planted pairs to {folder}")
        build(folder, n, plan)
    log("running find_duplicates in a fresh process")
    result = run_child(__file__, {"folder": str(folder)}, timeout=3600)
    group_of = {}
    for number, ids in enumerate(result["groups"]):
        for image_id in ids:
            group_of[image_id - 1] = number  # ids count from 1 in row order
    together = np.array([group_of.get(a, -1) == group_of.get(b, -2)
                         for a, b in zip(plan["a"], plan["b"], strict=True)])
    rows = []
    for kind in ("exact", "near", "similar"):
        mine = plan["kind"] == kind
        rows.append([kind, f"{mine.sum():,}", f"{together[mine].mean():.4f}"])
    wanted = {frozenset((a, b)) for a, b, k in zip(plan["a"], plan["b"], plan["kind"],
                                                   strict=True) if k != "similar"}
    grouped = sum(len(ids) - 1 for ids in result["groups"])
    planted_grouped = sum(frozenset((ids[0] - 1, m - 1)) in wanted
                          for ids in result["groups"] for m in ids[1:])
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return (f"## {n:,} synthetic vectors x {DIM}, {planted:,} planted pairs\n\n"
            + table(["what", "value"], [
                ["wall time (find_duplicates, near tier)", f"{result['seconds']:.1f} s"],
                ["peak memory of the process", f"{mib(result['peak'])} MiB"],
                ["pairs at the near threshold or closer", f"{result['pairs']:,}"],
                ["copies grouped", f"{grouped:,}"],
                ["copies grouped that were not planted", f"{grouped - planted_grouped:,}"],
                ["other load (cores)", f"{result['other']:.2f}"],
            ]) + "\n\nPlanted pairs grouped together (recall; similar ones must not be):\n\n"
            + table(["planted", "pairs", "grouped together"], rows))


def real(presets: list[str], seed: int = 0) -> str:
    """Precision and recall of each tier and preset on the Dup set's held-out half, through
    ``find_duplicates`` on the set's collection (the default model's, as calibrate_dedup.py
    indexed it)."""
    from dupset import FOLDER, ensure_dupset, split

    images, truth = ensure_dupset()
    paths = [os.path.abspath(images / f["path"]) for f in truth["files"]]
    half, key = split(truth, seed)
    tier_of = {(i, j): (tier, recipe) for i, j, tier, recipe in truth["pairs"]}

    def owner(i: int, j: int) -> int:
        return int(half[i] if half[i] == half[j] or key[i] < key[j] else half[j])

    planted = [(i, j, tier) for i, j, tier, recipe in truth["pairs"] if owner(i, j) == 1
               and recipe.split(":")[0] in ("exact", "near") and truth["files"][i]["recipe"]
               == "original"]
    rows = []
    with Collection.open_or_create(FOLDER / "collections" / MODEL, model=MODEL) as col:
        col.index([images], learn=False, show_progress=False)
        row_of = {col.find(path): n for n, path in enumerate(paths)}
        # Exact pairs from an exact scan (a near copy kept first would make them near to it);
        # near and similar ones from a similar scan, which groups copies first.
        scans = [("any", True, "exact"), *((p, True, "similar") for p in presets),
                 ("normal", False, "similar")]
        for preset, verify, scanned in scans:
            with Meter() as meter:
                started = time.perf_counter()
                report = find_duplicates(col, tier=scanned, preset=None if preset == "any"
                                         else preset, verify=verify)
                seconds = time.perf_counter() - started
            group_of, found = {}, defaultdict(list)  # tier -> [(truth tier, ...)]
            for number, group in enumerate(report.groups):
                keep = row_of[group.keep.image_id]
                group_of[keep] = (number, "exact")
                for m in group.members:
                    row = row_of[m.image_id]
                    group_of[row] = (number, m.tier)
                    i, j = min(keep, row), max(keep, row)
                    if owner(i, j) == 1:
                        found[m.tier].append(tier_of.get((i, j), ("unrelated", ""))[0])
            for tier, wanted in (("exact", {"exact"}), ("near", {"exact", "near"}),
                                 ("similar", {"exact", "near", "similar"})):
                if (tier == "exact") != (scanned == "exact"):
                    continue
                shown = [t for level in ("exact", "near", "similar")[:("exact", "near",
                         "similar").index(tier) + 1] for t in found[level] if t != "unsure"]
                precision = sum(t in wanted for t in shown) / len(shown) if shown else 1.0
                hits = [i in group_of and j in group_of and group_of[i][0] == group_of[j][0]
                        and max(("exact", "near", "similar").index(group_of[r][1])
                                for r in (i, j)) <= ("exact", "near", "similar").index(tier)
                        for i, j, t in planted if tier != "exact" or t == "exact"]
                rows.append([f"{preset}{'' if verify else ', cosine only'}", f"{tier}",
                             f"{len(shown):,}", f"{precision:.3f}",
                             f"{sum(hits) / len(hits):.3f}" if hits else "-",
                             f"{seconds:.0f} s", f"{meter.other_cores:.2f}"])
    return ("## Real photos: the Dup set's held-out half (benchmarks/dupset.py)\n\n"
            "Recall: each planted exact or near copy (the NEAR recipe: single edits and chains "
            "of 2-3) in one group with its original, at that tier or closer. Precision: the "
            "(kept copy, member) pairs reported at that tier or closer that are copies (for "
            "`similar`: copies or the same scene).\n\n"
            + table(["preset", "tier", "pairs reported", "precision", "recall", "scan",
                     "other load (cores)"], rows))


def main() -> None:
    if (spec := child_spec(sys.argv)) is not None:
        child(spec)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--planted", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--presets", default="normal",
                        help="Presets measured on real photos with the pixel check (each scan "
                             "checks ~16,000 pairs: 5-8 min); the cosine-only normal is "
                             "always measured.")
    args = parser.parse_args()
    print(f"# Duplicates\n\n{machine()}\n")
    if not args.skip_real:
        print(real(args.presets.split(",")) + "\n")
    if not args.skip_synthetic:
        print(synthetic(args.n, args.planted, args.keep))


if __name__ == "__main__":
    main()
