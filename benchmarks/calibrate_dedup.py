"""Calibrate the duplicate thresholds of each model on the Dup set: near-copy presets that check
pixels, the same for a cosine alone, and the similar threshold.

Each model indexes the Dup set (benchmarks/dupset.py: real photos, self-made exact, NEAR,
STANDARD and HEAVY copies, same-scene pictures, photos-2000) as the product does
(``Collection.create`` + ``index(learn=False)``, kept under the set's ``collections`` folder);
a pair's score is the cosine of the raw stored, L2-normalised vectors. Every pair at or above
:data:`FLOOR` for any model (photos-2000's left-out crop pairs aside) is checked on its pixels
once (:func:`lookalike.dedup.verify.scores`: ``aligned`` and ``detail``, in :data:`WORKERS`
processes), cached under the set's ``checks`` folder by the set's version and verify.py's source.

As the product does, a pair is reported ``exact`` when both files have the same bytes, or the
same decoded pixels and a cosine of at least 0.99, and ``near`` when its cosine, aligned and
detail scores pass the preset's three thresholds. On the calibration half, for each preset
(``strict``, ``normal``, ``loose``: precision at least 99.9 %, 99 %, 95 %) a grid search over
(cosine >= FLOOR and aligned, 0.005 apart; detail, 0.01 apart) keeps the highest headline recall
whose precision reaches the target (ties: higher precision, then higher thresholds). Precision:
the reported pairs (exact or near) that are exact or near copies in truth; similar and unrelated
pairs are false positives. ``near_cosine`` holds the presets for a cosine alone (``--no-verify``),
the lowest cosines reaching the targets; ``similar`` the lowest cosine at which 90 % of the pairs
are exact, near or similar. Thresholds are multiples of 0.005 (detail: 0.01), so rounded up.

Headline recall: each planted copy found with its original, i.e. the original-copy pairs of the
exact and NEAR copies (dupset.NEAR: single edits and chains); exact pairs count as found whatever
the near rule. Pairs of two copies, STANDARD and HEAVY copies, the packages' own copies, every
recipe and edit kind are reported apart. photos-2000's pairs of overlapping crops (IoU >= 0.3)
are left out of precision and of the headline: true copies, but 40,000 easy ones.

The thresholds are then measured on the held-out half; those numbers go into
src/lookalike/thresholds.json. ``--split-seeds 0,1,2`` also calibrates on other seeded
splits and prints the thresholds' spread; the first seed's are written.

    python benchmarks/calibrate_dedup.py                              # all six models
    python benchmarks/calibrate_dedup.py --models efficientnet-lite0-gem --split-seeds 0,1,2
    python benchmarks/calibrate_dedup.py --floor 0.65 --no-write     # check more pairs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dupchecks import WORKERS, checked, exact_pairs  # noqa: E402  (benchmarks are scripts)
from dupset import FOLDER, ensure_dupset, split  # noqa: E402
from lookalike import Collection  # noqa: E402
from lookalike.thresholds import SAME_PIXELS_COSINE  # noqa: E402

MODELS = ("efficientnet-lite0-gem", "efficientnet-lite0", "efficientnet-lite1-gem",
          "efficientnet-lite1", "efficientnet-lite2-gem", "efficientnet-lite2")
PRESETS = {"strict": 0.999, "normal": 0.99, "loose": 0.95}
SIMILAR_PRECISION = 0.9
THRESHOLDS = Path(__file__).resolve().parents[1] / "src/lookalike/thresholds.json"
UNRELATED, COPY, SIMILAR, LEFT_OUT = 0, 1, 2, 3
CALIBRATION, HELD_OUT = 0, 1
FLOOR = 0.70  # the lowest cosine whose pairs are checked (and the grid's lowest): --floor
ALIGNED = np.round(np.arange(0.5, 1.0, 0.005), 3)
DETAILS = np.round(np.arange(0.0, 1.0, 0.01), 2)
COPY_COPY = ("copies:exact+exact", "copies:exact+near", "copies:near+near")


def embed(model: str, images: Path, paths: list[str]) -> tuple[np.ndarray, str]:
    """(raw stored vectors in ``paths`` order, runtime)."""
    with Collection.open_or_create(FOLDER / "collections" / model, model=model) as col:
        report = col.index([images], learn=False, show_progress=False)
        if report.failed:
            raise SystemExit(f"calibrate_dedup: {len(report.failed)} files failed to index")
        rows = col.store.live_rows([os.path.abspath(images / p) for p in paths])
        ids = [rows[os.path.abspath(images / p)].id for p in paths]
        stored = col.store.vectors(ids)
        return np.stack([stored[i] for i in ids]).astype(np.float32), col.embedder.runtime


def labels(truth: dict) -> np.ndarray:
    """The pair kinds (UNRELATED, COPY, SIMILAR, LEFT_OUT), as an upper-triangular matrix."""
    n = len(truth["files"])
    kind = np.zeros((n, n), np.int8)
    for i, j, tier, recipe in truth["pairs"]:
        left_out = tier == "unsure" or (recipe == "p2000-crop" and tier == "near")
        kind[i, j] = LEFT_OUT if left_out else COPY if tier in ("exact", "near") else SIMILAR
    return kind


def owners(half: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The half each pair belongs to: its files' half, or for a cross pair its smaller key's."""
    first = key[:, None] < key[None, :]
    return np.where(half[:, None] == half[None, :], half[:, None],
                    np.where(first, half[:, None], half[None, :])).astype(np.int8)


class Model:
    """One model's candidate pairs (cosine >= FLOOR) and ground-truth pairs, with their scores."""

    def __init__(self, scores: np.ndarray, pairs: np.ndarray, checks: np.ndarray,
                 same_bytes: np.ndarray, same_pixels: np.ndarray, kind: np.ndarray, truth: dict,
                 floor: float):
        cos = scores[pairs[:, 0], pairs[:, 1]]
        mine = cos >= floor
        self.cosines = np.round(np.arange(floor, 1.0, 0.005), 3)
        self.pairs, self.cos = pairs[mine], cos[mine]
        self.aligned, self.detail = checks[mine, 0], checks[mine, 1]
        self.exact = same_bytes[mine] | (same_pixels[mine] & (self.cos >= SAME_PIXELS_COSINE))
        self.copy = kind[self.pairs[:, 0], self.pairs[:, 1]] == COPY
        self.related = kind[self.pairs[:, 0], self.pairs[:, 1]] != UNRELATED
        n = len(scores)
        t = np.array([(i, j) for i, j, tier, _ in truth["pairs"] if tier != "unsure"], np.int64)
        at = np.searchsorted(self.pairs[:, 0] * n + self.pairs[:, 1], t[:, 0] * n + t[:, 1])
        at = np.minimum(at, len(self.pairs) - 1)
        found = (self.pairs[at, 0] == t[:, 0]) & (self.pairs[at, 1] == t[:, 1])
        self.t, self.t_cos = t, scores[t[:, 0], t[:, 1]]
        self.t_aligned = np.where(found, self.aligned[at], -3.0)
        self.t_detail = np.where(found, self.detail[at], -3.0)
        self.t_exact, self.t_at = found & self.exact[at], np.where(found, at, -1)
        self.groups: dict[str, list[int]] = defaultdict(list)
        for k, (_, _, tier, recipe) in enumerate(p for p in truth["pairs"] if p[2] != "unsure"):
            names = ["related"]
            if tier in ("exact", "near"):
                family = recipe.split(":")[0]
                names += ["p2000-crop"] if recipe == "p2000-crop" else ["copies", recipe, family]
                if family in ("exact", "near"):
                    names += ["headline"] + (["near only"] if tier == "near" else [])
                names += ["copy-copy"] if recipe in COPY_COPY else []
            for name in names:
                self.groups[name].append(k)

    def split(self, seed: int, truth: dict) -> None:
        owner = owners(*split(truth, seed))
        self.c_owner = owner[self.pairs[:, 0], self.pairs[:, 1]]
        self.t_owner = owner[self.t[:, 0], self.t[:, 1]]

    def rule(self, cos: float, aligned: float, detail: float) -> tuple[np.ndarray, np.ndarray]:
        """(reported candidates, found ground-truth pairs) under a verified near rule."""
        return (self.exact | ((self.cos >= cos) & (self.aligned >= aligned)
                              & (self.detail >= detail)),
                self.t_exact | ((self.t_cos >= cos) & (self.t_aligned >= aligned)
                                & (self.t_detail >= detail)))

    def measure(self, reported: np.ndarray, found: np.ndarray, which: int,
                hits: np.ndarray | None = None) -> dict:
        """Precision of the ``reported`` candidates (the share of ``hits``, default copies) and
        recall of the ``found`` ground-truth pairs in half ``which``."""
        mine = reported & (self.c_owner == which)
        hits = self.copy if hits is None else hits
        precision = float((mine & hits).sum() / mine.sum()) if mine.any() else 1.0
        recall = {}
        for name, members in self.groups.items():
            members = np.asarray(members)
            members = members[self.t_owner[members] == which]
            if len(members):
                recall[name] = float(found[members].mean())
        return {"precision": precision, "recall": recall}

    def lowest(self, target: float, hits: np.ndarray) -> float:
        """The lowest cosine on the grid at which ``target`` of the calibration half's pairs at
        or above it are ``hits``, for a cosine alone."""
        for cos in self.cosines:
            mine = (self.c_owner == CALIBRATION) & (self.cos >= cos)
            if not mine.any() or hits[mine].mean() >= target:
                return float(cos)
        return 1.0

    def grid(self, targets: dict[str, float]) -> dict[str, tuple[float, float, float]]:
        """Per preset, the (cosine, aligned, detail) of the calibration half's grid search."""
        half = self.c_owner == CALIBRATION
        heads = np.asarray(self.groups["headline"])
        heads = heads[self.t_owner[heads] == CALIBRATION]
        head = np.zeros(len(self.pairs), bool)
        head[self.t_at[heads][self.t_at[heads] >= 0]] = True
        ci = np.searchsorted(self.cosines, self.cos, "right") - 1
        ai = np.searchsorted(ALIGNED, self.aligned, "right") - 1
        di = np.searchsorted(DETAILS, self.detail, "right") - 1
        keep = half & ~self.exact & (ci >= 0) & (ai >= 0) & (di >= 0)
        base = half & self.exact

        def cube(weight: np.ndarray) -> np.ndarray:
            counts = np.zeros((len(self.cosines), len(ALIGNED), len(DETAILS)))
            np.add.at(counts, (ci[keep], ai[keep], di[keep]), weight[keep])
            for axis in range(3):  # counts at or above each threshold
                counts = np.flip(np.cumsum(np.flip(counts, axis), axis), axis)
            return counts + (base & weight).sum()

        tp, fp, hits = cube(self.copy), cube(~self.copy), cube(head)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0).ravel()
        recall = (hits / max(len(heads), 1)).ravel()
        c, a, d = (x.ravel() for x in np.meshgrid(self.cosines, ALIGNED, DETAILS, indexing="ij"))
        out = {}
        for name, target in targets.items():
            ok = np.flatnonzero(precision >= target)
            best = ok[np.lexsort((d[ok], a[ok], c[ok], precision[ok], recall[ok]))[-1]]
            out[name] = (float(c[best]), float(a[best]), float(d[best]))
        return out


def calibrate(model: Model, truth: dict, seed: int) -> dict:
    """Thresholds chosen on the calibration half of split ``seed``, with both halves' numbers."""
    model.split(seed, truth)
    out: dict[str, dict] = {"near": {}, "near_cosine": {}}
    for name, (cos, aligned, detail) in model.grid(PRESETS).items():
        reported, found = model.rule(cos, aligned, detail)
        out["near"][name] = {"threshold": cos, "aligned": aligned, "detail": detail, **{
            h: model.measure(reported, found, k)
            for k, h in enumerate(("calibration", "held-out"))}}
    for name, target in [*PRESETS.items(), ("similar", SIMILAR_PRECISION)]:
        hits = model.related if name == "similar" else model.copy
        threshold = model.lowest(target, hits)
        reported = model.exact | (model.cos >= threshold)
        found = model.t_exact | (model.t_cos >= threshold)
        numbers = {"threshold": threshold, **{h: model.measure(reported, found, k, hits)
                                              for k, h in enumerate(("calibration", "held-out"))}}
        if name == "similar":
            out["similar"] = numbers
        else:
            out["near_cosine"][name] = numbers
    return out


def rows(result: dict):
    """(preset, check, numbers) of the table's rows for one model."""
    for check in ("near", "near_cosine"):
        for name, r in result[check].items():
            yield name, "pixels" if check == "near" else "cosine", r
    yield "similar", "cosine", result["similar"]


def table(results: dict[str, dict]) -> str:
    out = ["| model | preset | check | cos | aligned | detail | cal. P | cal. R | held-out P | "
           "held-out R | copy-copy R | all copies R | STANDARD R | HEAVY R | package R | "
           "p2000-crop R |", "|---|---|---|---|---|---|" + "---|" * 10]
    for model, result in results.items():
        for name, check, r in rows(result):
            cal, held = r["calibration"], r["held-out"]
            key = "related" if name == "similar" else "headline"
            rec = held["recall"]
            limits = (f"{r['aligned']:.3f} | {r['detail']:.2f}" if "aligned" in r else " | ")
            out.append(f"| {model} | {name} | {check} | {r['threshold']:.3f} | {limits} | "
                       f"{cal['precision']:.4f} | {cal['recall'][key]:.3f} | "
                       f"{held['precision']:.4f} | {rec[key]:.3f} | " + " | ".join(
                           f"{rec.get(k, float('nan')):.3f}" for k in (
                               "copy-copy", "copies", "standard", "heavy", "package-copy",
                               "p2000-crop")) + " |")
    return "\n".join(out)


def kinds_table(results: dict[str, dict], preset: str = "normal") -> str:
    """Held-out recall of original-copy pairs per edit kind and recipe, at ``preset``."""
    kinds = ("bytes", "exif", "png", "jpeg", "scale", "crop", "colour", "grey", "text", "border",
             "rotate", "blur", "flip", "chain")
    out = ["| model | check | recipe | " + " | ".join(kinds) + " |",
           "|---|---|---|" + "---|" * len(kinds)]
    for n, (model, result) in enumerate(results.items()):
        for check in ("near", "near_cosine")[:2 if n == 0 else 1]:
            recall = result[check][preset]["held-out"]["recall"]
            for family in ("exact", "near", "standard", "heavy"):
                cells = [f"{recall[f'{family}:{k}']:.2f}" if f"{family}:{k}" in recall else ""
                         for k in kinds]
                out.append(f"| {model} | {check} | {family} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def false_positives(model: Model, result: dict, truth: dict, paths: list[str],
                    which: int, limit: int = 12) -> str:
    """The ``normal`` preset's false positives in half ``which``, highest detail first."""
    r = result["near"]["normal"]
    reported, _ = model.rule(r["threshold"], r["aligned"], r["detail"])
    wrong = np.flatnonzero(reported & ~model.copy & (model.c_owner == which))
    recipe = {(i, j): f"{tier} {name}" for i, j, tier, name in truth["pairs"]}
    lines = [f"  {len(wrong)} false positives; highest detail first:"]
    for k in wrong[np.argsort(-model.detail[wrong])][:limit]:
        i, j = model.pairs[k]
        lines.append(f"  {paths[i]}  {paths[j]}  ({recipe.get((i, j), 'unrelated')}; cos "
                     f"{model.cos[k]:.3f}, aligned {model.aligned[k]:.3f}, detail "
                     f"{model.detail[k]:.3f}{', exact' if model.exact[k] else ''})")
    return "\n".join(lines)


def describe(truth: dict, seed: int) -> str:
    files = truth["files"]
    count = defaultdict(int)
    for f in files:
        count[f["recipe"].split(":")[0]] += 1
    return (f"Dup set (benchmarks/dupset.py): {len(files)} files: {count['original']} real "
            f"originals, {count['other']} other real files, {count['exact']} exact, "
            f"{count['near']} NEAR, {count['standard']} STANDARD and {count['heavy']} HEAVY "
            f"copies, {count['p2000']} photos-2000; half the pictures held out (split seed {seed})")


def write(results: dict[str, dict], precisions: dict[str, str], about: str) -> None:
    old = json.loads(THRESHOLDS.read_text()) if THRESHOLDS.is_file() else {}
    models = old.get("models", {}) if old.get("set") == about and old.get("version") == 2 else {}
    for model, result in results.items():
        entry: dict = {"near": {}, "near_cosine": {}}
        for name, check, r in rows(result):
            held = r["held-out"]
            numbers = {k: r[k] for k in ("threshold", "aligned", "detail") if k in r}
            numbers.update(precision=round(held["precision"], 4), recall=round(
                held["recall"]["related" if name == "similar" else "headline"], 4))
            if name == "similar":
                entry["similar"] = numbers
            else:
                entry["near" if check == "pixels" else "near_cosine"][name] = numbers
        models[model] = {**entry, "precision": precisions[model]}
    ordered = {m: models[m] for m in [*MODELS, *sorted(set(models) - set(MODELS))] if m in models}
    THRESHOLDS.write_text(json.dumps({
        "version": 2, "command": "python benchmarks/calibrate_dedup.py", "set": about,
        "models": ordered}, indent=1) + "\n")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--split-seeds", default="0", help="the first one's thresholds are kept")
    parser.add_argument("--no-write", action="store_true", help="leave thresholds.json alone")
    parser.add_argument("--floor", type=float, default=FLOOR, help="lowest cosine checked")
    args = parser.parse_args()
    seeds = [int(s) for s in args.split_seeds.split(",")]
    print(f"load average before: {load()}")
    images, truth = ensure_dupset()
    paths = [f["path"] for f in truth["files"]]
    kind = labels(truth)
    scores, precisions = {}, {}
    for name in args.models.split(","):
        vectors, runtime = embed(name, images, paths)
        precisions[name] = "bf16" if runtime.endswith("bf16") else "f32"
        scores[name] = vectors @ vectors.T
    candidate = np.zeros(kind.shape, bool)
    for s in scores.values():
        candidate |= s >= args.floor
    pairs = np.argwhere(np.triu(candidate, 1) & (kind != LEFT_OUT))
    checks, stats = checked(images, paths, pairs)
    top = np.max([s[pairs[:, 0], pairs[:, 1]] for s in scores.values()], axis=0)
    same_bytes, same_pixels = exact_pairs(images, paths, pairs, top)
    print(f"{stats['pairs']} candidate pairs (cosine >= {args.floor} for any of "
          f"{len(scores)} models) checked on their pixels, {stats['new']} this run in "
          f"{stats['wall']:.0f} s with {WORKERS} processes; "
          f"{1000 * stats['seconds'] / max(stats['count'], 1):.1f} ms CPU per pair "
          f"(thumbnails included); load {load()}", flush=True)
    results, spread, fps = {}, defaultdict(list), []
    for name, s in scores.items():
        model = Model(s, pairs, checks, same_bytes, same_pixels, kind, truth, args.floor)
        wrong = int((model.exact & ~model.copy).sum())
        missed = int((~model.t_exact[model.groups["exact"]]).sum())
        print(f"{name}: {len(model.pairs)} candidates; exact by files: "
              f"{int(model.exact.sum())} ({wrong} not copies), {missed} exact copies not",
              flush=True)
        for seed in seeds:
            result = calibrate(model, truth, seed)
            if seed == seeds[0]:
                results[name] = result
            for preset, check, r in rows(result):
                spread[name, preset, check].append(r)
        if name == MODELS[0] or len(fps) == 0:
            model.split(seeds[0], truth)
            fps.append(f"{name}, normal, calibration half:\n"
                       + false_positives(model, results[name], truth, paths, CALIBRATION)
                       + f"\n{name}, normal, held-out half:\n"
                       + false_positives(model, results[name], truth, paths, HELD_OUT))
    print("\n" + table(results) + "\n\nHeld-out recall per edit kind at `normal`:\n\n"
          + kinds_table(results) + "\n\n" + "\n".join(fps))
    if len(seeds) > 1:
        print(f"\nThresholds (cos/aligned/detail) and held-out P, R over split seeds {seeds}:\n")
        for (name, preset, check), values in spread.items():
            keys = [k for k in ("threshold", "aligned", "detail") if k in values[0]]
            key = "related" if preset == "similar" else "headline"
            cells = ", ".join("/".join(f"{v[k]:.3f}" for k in keys) + " (P {precision:.3f} R "
                              "{:.3f})".format(v["held-out"]["recall"][key], **v["held-out"])
                              for v in values)
            print(f"  {name} {preset} {check}: {cells}; spread " + "/".join(
                f"{max(v[k] for v in values) - min(v[k] for v in values):.3f}" for k in keys))
    if not args.no_write:
        write(results, precisions, describe(truth, seeds[0]))
        print(f"\nwrote {THRESHOLDS}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
