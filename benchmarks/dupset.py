"""Dup: a duplicate-detection set, to calibrate `lookalike`'s near-duplicate thresholds on.

Every image is a file under one folder; the ground truth says, for every pair of files that is
not unrelated, its tier (exact, near, similar) and the recipe that made it.

* Real photos: every file of CD-heavy's real photos (GCompris, Tux Paint, OpenCV; see
  benchmarks/cdheavy.py), grouped by CD-heavy's same-picture matches (matches.json) into
  pictures and scenes. Files of one picture are *near* ("package-copy": one photo shipped twice,
  resized, recoloured or mirrored: thumbnail and ORB matches, Tux Paint's ``*_mirror`` stamps);
  the largest is an original. Pictures of one scene are *similar*: OpenCV's stereo pairs,
  consecutive frames and chessboard frames, Euro coins of one design (other coins), and the near
  misses ORB looked at but did not group (two photos of one minaret, one gnu calf in two
  poses...).
* Self-made copies of each original: *exact* for a quarter of them, in turn a byte-identical
  copy, the JPEG with an EXIF block spliced in (same pixels, other bytes) or a lossless PNG;
  *near*: two copies with :data:`NEAR` (one single edit, the :data:`NEAR_KINDS` taking turns,
  and one chain of 2-3 of them), one with a single :data:`lookalike.edits.STANDARD` edit (all ten
  kinds in turn) and one with :data:`lookalike.edits.HEAVY` (a single edit and a chain in turn).
  Copies of one original are near (exact among the exact ones) to each other too.
* :data:`NEAR`, the headline recipe, is what duplicates in a photo library look like: re-encoded,
  downscaled, cropped, recoloured or turned grey, a watermark text, a border, and chains of 2-3
  of these, with STANDARD's ranges (JPEG quality 10-40, crops keeping 50-90 %, 20-50 % size...).
  Rotation, blur and mirroring are left to the STANDARD and HEAVY copies, which are reported
  apart; the chains make it at least as hard as STANDARD's single edits.
* photos-2000 (benchmarks/photos.py): 2,000 random crops (55-100 % of each side, flipped or not,
  colour-jittered) of 47 wallpapers, which show no real photo's picture. Their crop boxes are
  replayed from photos.py's seeds, so two crops of one source are *near* ("p2000-crop") when the
  boxes' intersection over union is at least :data:`CROP_NEAR` (one is mostly the other, cropped),
  *similar* below :data:`CROP_UNSURE` (other parts of one scene) and *unsure* in between: neither
  right nor wrong for any tier, left out of precision and recall alike.

Split: the unit is a picture (its real files and their self-made copies) or a photos-2000
source; :func:`split` puts the units, seeded, half in ``calibration`` and half in ``held-out``, so
every exact and near pair is in the half of its original. A pair of files of different halves
(unrelated, or similar: two pictures of one scene) belongs to the half of the file with the
smaller seeded key, so each half keeps about half the set's unrelated and similar pairs (one
scene, such as OpenCV's 28 chessboard frames, is not all in one half) and as many distractors per
duplicate as the whole set.

Cached under benchmarks/out/evalsets/dup-v<DUP_SET_VERSION>; rebuilt only when the recipe changes.
truth.json holds ``files`` (path, unit, recipe, edit) and ``pairs`` ([i, j, tier, recipe]).

    python benchmarks/dupset.py    # build it, print its composition
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdheavy import FOLDER as CD_HEAVY  # noqa: E402  (benchmarks are scripts, not a package)
from cdheavy import OPENCV_SAME, SINGLES, ensure_cd_heavy  # noqa: E402
from evalsets import SETS, _finish, _fresh, ensure_distractors, log  # noqa: E402
from lookalike.edits import HEAVY, STANDARD, Ranges, apply_edit, chain  # noqa: E402
from samepicture import components  # noqa: E402

DUP_SET_VERSION = 2
FOLDER = SETS / f"dup-v{DUP_SET_VERSION}"
#: The headline near recipe: STANDARD's ranges, chains of 2-3 (see the module docstring).
NEAR = Ranges(chain_length=(2, 3))
NEAR_KINDS = ("jpeg", "scale", "crop", "colour", "grey", "text", "border")
EXACT_EVERY = 4  # one original in EXACT_EVERY gets an exact copy
EXACT_KINDS = ("bytes", "exif", "png")
CROP_NEAR = 0.5  # crop boxes' IoU from which two photos-2000 crops are near copies
CROP_UNSURE = 0.3  # ... and below which they are only similar
FAMILIES = ("exact", "near", "standard", "heavy")  # self-made copies, easiest first


@dataclass
class File:
    path: str  # relative to the set folder
    unit: int  # what the split assigns to a half
    recipe: str  # "original", "other", "p2000", or "<family>:<kind>" for a self-made copy
    edit: str = ""  # the parameters drawn
    node: int = -1  # files with one node >= 0 are copies of one picture (near among themselves)
    group: int = -1  # files with one group >= 0 show one scene (similar at least)


def _real_tiers(names: list[str]) -> tuple[list[int], list[int]]:
    """(picture, scene) of each of CD-heavy's real photos from its matches: files of one picture
    are near copies, of one scene at least similar. OpenCV's name rules, Euro coins of other
    values and the near misses ORB rejected join scenes only; every other match joins pictures."""
    index = {n: i for i, n in enumerate(names)}
    cv_same = {frozenset((f"cv-data_{a}.jpg", f"cv-data_{b}.jpg")) for a, b in OPENCV_SAME}
    copies, scenes = [], []
    for m in json.loads((CD_HEAVY / "matches.json").read_text()):
        if m["a"] not in index or m["b"] not in index:  # photos-2000's sources
            continue
        scenes.append((index[m["a"]], index[m["b"]]))
        scene_only = not m["same"] or "euro_coins" in m["a"] or (m["a"].startswith("cv-") and (
            m["how"] == "name" or frozenset((m["a"], m["b"])) in cv_same))
        if not scene_only:
            copies.append(scenes[-1])
    return components(len(names), copies), components(len(names), scenes)


def _splice_exif(jpeg: bytes) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0132] = "Lookalike", "Dup 1", "2026:01:02 03:04:05"
    payload = exif.tobytes()
    return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _exact_copy(source: Path, out: Path, kind: str) -> Path:
    if kind == "bytes":
        shutil.copyfile(source, out)
    elif kind == "exif":
        out.write_bytes(_splice_exif(source.read_bytes()))
    else:
        out = out.with_suffix(".png")
        with Image.open(source) as image:
            image.convert("RGB").save(out, "PNG")
    return out


def _edited(image: Image.Image, kind: str, ranges: Ranges, rng: np.random.Generator,
            kinds: tuple[str, ...] | None = None) -> tuple[Image.Image, str]:
    """``kind`` applied; a ``chain`` drawn from ``kinds`` (all edits without them)."""
    if kind != "chain" or kinds is None:
        return apply_edit(kind, image, rng, ranges)
    return chain(image, rng, ranges, kinds)


def _copies(k: int) -> list[tuple[str, str]]:
    """(family, kind) of the self-made copies of original number ``k``."""
    out = []
    if k % EXACT_EVERY == 0:
        out.append(("exact", EXACT_KINDS[(k // EXACT_EVERY) % len(EXACT_KINDS)]))
    out += [("near", NEAR_KINDS[k % len(NEAR_KINDS)]), ("near", "chain"),
            ("standard", SINGLES[k % len(SINGLES)]),
            ("heavy", SINGLES[(k // 2) % len(SINGLES)] if k % 2 == 0 else "chain")]
    return out


def _crop_boxes(count: int, seed: int) -> tuple[list[int], np.ndarray]:
    """(source, crop box (x0, y0, x1, y1) in the source) of photos-2000's photos, replaying the
    random numbers benchmarks/photos.py's make_photo draws first (crop size, then position)."""
    from photos import SET_VERSION, load_sources

    if SET_VERSION != 1:
        raise SystemExit("dupset: photos.py's recipe changed; check _crop_boxes against it")
    sizes = [s.image.size for s in load_sources()]
    sources, boxes = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        width, height = sizes[i % len(sizes)]
        w = max(16, round(width * rng.uniform(0.55, 1.0)))
        h = max(16, round(height * rng.uniform(0.55, 1.0)))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        sources.append(i % len(sizes))
        boxes.append((left, top, left + w, top + h))
    return sources, np.array(boxes, np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return w * h / (area - w * h)


def _link(source: Path, out: Path) -> None:
    try:
        os.link(source, out)
    except OSError:
        shutil.copyfile(source, out)


def _pair_recipe(a: File, b: File) -> str:
    """A copy's recipe against its original; ``copies:x+y`` (families, easiest first) for two
    copies; ``package-copy`` where a file the packages ship takes part."""
    if a.recipe == "original" or b.recipe == "original":
        other = b if a.recipe == "original" else a
        return "package-copy" if other.recipe == "other" else other.recipe
    if "other" in (a.recipe, b.recipe):
        return "package-copy"
    fa, fb = sorted((a.recipe.split(":")[0], b.recipe.split(":")[0]), key=FAMILIES.index)
    return f"copies:{fa}+{fb}"


def _pairs(files: list[File], boxes: dict[int, np.ndarray]) -> list[list]:
    by_group: dict[int, list[int]] = {}
    for i, f in enumerate(files):
        if f.group >= 0:
            by_group.setdefault(f.group, []).append(i)
    pairs = []
    for members in by_group.values():
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                a, b = files[i], files[j]
                if a.node != b.node:
                    pairs.append([i, j, "similar", "same-scene"])
                    continue
                exact = all(f.recipe == "original" or f.recipe.startswith("exact:")
                            for f in (a, b))
                pairs.append([i, j, "exact" if exact else "near", _pair_recipe(a, b)])
    by_unit: dict[int, list[int]] = {}
    for i in boxes:
        by_unit.setdefault(files[i].unit, []).append(i)
    for members in by_unit.values():
        for x, i in enumerate(members):
            for j in members[x + 1:]:
                iou = _iou(boxes[i], boxes[j])
                tier = "near" if iou >= CROP_NEAR else "unsure" if iou >= CROP_UNSURE else \
                    "similar"
                pairs.append([i, j, tier, "p2000-crop"])
    return sorted(pairs)


def ensure_dupset(seed: int = 0) -> tuple[Path, dict]:
    """(the set's folder, its ground truth), built first if needed."""
    ensure_cd_heavy(seed)
    p2000_folder = ensure_distractors()
    recipe = {"version": DUP_SET_VERSION, "seed": seed, "near": asdict(NEAR),
              "near_kinds": NEAR_KINDS, "standard": asdict(STANDARD), "heavy": asdict(HEAVY),
              "crop_near": CROP_NEAR, "crop_unsure": CROP_UNSURE,
              "cd_heavy": json.loads((CD_HEAVY / "evalset.json").read_text())}
    recipe = json.loads(json.dumps(recipe))  # tuples as the manifest holds them
    if _fresh(FOLDER, recipe):
        return FOLDER / "images", json.loads((FOLDER / "truth.json").read_text())
    shutil.rmtree(FOLDER, ignore_errors=True)
    images = FOLDER / "images"
    for sub in ("real", "copies", "p2000"):
        (images / sub).mkdir(parents=True)
    real = sorted((CD_HEAVY / "photos").glob("*.jpg"))
    node, group = _real_tiers([p.name for p in real])
    files = []
    for i, path in enumerate(real):
        _link(path, images / "real" / path.name)
        files.append(File(f"real/{path.name}", node[i], "other", node=node[i], group=group[i]))
    members: dict[int, list[int]] = {}
    for i in range(len(real)):
        members.setdefault(node[i], []).append(i)
    originals = sorted(max(m, key=lambda i: _pixels(real[i]))
                       for m in members.values())
    log(f"dupset: {len(real)} real photos, {len(originals)} originals; making copies")
    ranges = {"near": NEAR, "standard": STANDARD, "heavy": HEAVY}
    for k, i in enumerate(originals):
        files[i].recipe = "original"
        with Image.open(real[i]) as opened:
            image = opened.convert("RGB")
        for c, (family, kind) in enumerate(_copies(k)):
            out = images / "copies" / f"{real[i].stem}-{c}-{family}-{kind}.jpg"
            if family == "exact":
                out, edit = _exact_copy(real[i], out, kind), ""
            else:
                edited, edit = _edited(image, kind, ranges[family],
                                       np.random.default_rng([seed, 16, k, c]),
                                       NEAR_KINDS if family == "near" else None)
                edited.save(out, "JPEG", quality=95)
            files.append(File(f"copies/{out.name}", node[i], f"{family}:{kind}", edit, node[i],
                              group[i]))
    p2000 = sorted(p2000_folder.glob("photo-*.jpg"))
    source_of, crop = _crop_boxes(len(p2000), seed)
    first_unit = max(node) + 1
    boxes = {}
    for i, path in enumerate(p2000):
        _link(path, images / "p2000" / path.name)
        boxes[len(files)] = crop[i]
        files.append(File(f"p2000/{path.name}", first_unit + source_of[i], "p2000"))
    truth = {"files": [asdict(f) for f in files], "pairs": _pairs(files, boxes)}
    (FOLDER / "truth.json").write_text(json.dumps(truth, separators=(",", ":")) + "\n")
    (FOLDER / "composition.json").write_text(json.dumps(composition(truth), indent=1) + "\n")
    _finish(FOLDER, recipe)
    return images, truth


def _pixels(path: Path) -> int:
    with Image.open(path) as image:
        return image.size[0] * image.size[1]


def split(truth: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(half of each file: 0 calibration, 1 held-out; a seeded key per file) by unit, half the
    units each; a cross pair belongs to the half of its file with the smaller key."""
    units = sorted({f["unit"] for f in truth["files"]})
    rng = np.random.default_rng([seed, 17])
    half_of = dict(zip(units, rng.permutation(len(units)) % 2, strict=True))
    half = np.array([half_of[f["unit"]] for f in truth["files"]], np.int8)
    return half, rng.random(len(half))


def composition(truth: dict) -> dict:
    """Files by recipe and pairs by tier and recipe."""
    files = truth["files"]
    return {"files": len(files),
            "files by recipe": dict(Counter(f["recipe"].split(":")[0] for f in files)),
            "copies by recipe": dict(Counter(f["recipe"] for f in files if ":" in f["recipe"])),
            "pairs by tier": dict(Counter(p[2] for p in truth["pairs"])),
            "pairs by tier and recipe": dict(Counter(f"{p[2]} {p[3].split(':')[0]}"
                                                     for p in truth["pairs"]))}


def main() -> None:
    folder, truth = ensure_dupset()
    print(f"Dup set: {folder}")
    print(json.dumps(composition(truth), indent=1))


if __name__ == "__main__":
    main()
