"""CD-heavy: a copy-detection set built to be at least as hard as a held-out set we do not have.

Originals are the real photographs of three Debian packages (fetched with ``apt-get download``
and unpacked with ``dpkg -x``, never installed): GCompris's photo activities (monuments, animals,
tools, the sea...; its drawings, puzzle pieces and detail crops are left out), Tux Paint's photo
stamps (cut-outs flattened onto white; clip-art and cartoons left out) and OpenCV's samples
(synthetic images left out), long side at most 1,024 px. Fewer than 800 distinct pictures ship
there, so every picture not held out is an original.

Files that show the same picture are grouped (benchmarks/samepicture.py: thumbnails and ORB
keypoints, plus name rules: Tux Paint's ``*_mirror`` stamps and stamps of one name, OpenCV's
stereo pairs and consecutive frames). A query's right answer is any file of its original's group;
the groups cover the whole database, distractors included.

* Originals: the largest file of each picture, but for 10 % of the pictures (seeded), which are
  distractors instead.
* Queries: two per original, both with :data:`lookalike.evaluation.HEAVY` ranges (crops keeping
  25-80 %, rotation 5-30 degrees, JPEG 5-40, blur σ 1-4 px at 224 px, downscaling to 20-50 %,
  text with a caption bar...): one single edit, the kinds taking turns, and one chain of 2-4.
* Distractors (2,000): the other files of the originals' pictures; every file of the held-out
  pictures and four heavy copies of each (near-copies of real photos that are no query's); then
  photos-2000 (crops of 47 other photos, which are checked against the real ones the same way),
  half as they are and half heavily edited, so edit marks (bars, borders, black corners, grey)
  are no clue by themselves.

Cached under benchmarks/out/evalsets/cd-heavy; rebuilt when the recipe (this module's
HEAVY_SET_VERSION, the seed, the packages found, the heavy ranges) changes.

    python benchmarks/cdheavy.py    # build it, print its composition
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evalsets import (  # noqa: E402  (benchmarks are scripts, not a package)
    _STAMPS,
    GCOMPRIS,
    SETS,
    TUX,
    _finish,
    _fresh,
    _package,
    ensure_distractors,
    flatten,
    is_clipart,
    log,
    read_rcc,
)
from lookalike.evaluation import (
    EDITS,
    HEAVY,
    CopyDetectionSet,
    apply_edit,
    embed_files,
    load_copydetect,
    load_embedder,
    write_copydetect,
)
from samepicture import RULES, components, same_picture  # noqa: E402

HEAVY_SET_VERSION = 1
FOLDER = SETS / "cd-heavy"
OPENCV = "opencv-doc"
_EXAMPLES = "usr/share/doc/opencv-doc/examples/"
MAX_SIDE = 1024
MIN_SIDE = 64
HELD_OUT = 0.1  # share of the pictures that are distractors instead of originals
NEAR_COPIES = 4  # heavy copies of each held-out picture among the distractors
DISTRACTORS = 2000
SINGLES = [e for e in EDITS if e != "chain"]
CANDIDATE_MODEL = "efficientnet-lite0"  # proposes same-picture pairs, never decides one

# GCompris activities whose images are photos, and which of their files: "" all, "?" those that
# are not clip-art, else the files whose name starts ("sea") or ends ("_background") with it.
GCOMPRIS_PHOTOS = {
    "categorization": "", "explore_monuments": "", "explore_world_animals": "",
    "explore_farm_animals": "", "explore_world_music": "", "erase": "", "leftright": "",
    "clickgame": "sea", "details": "_background", "babyshapes": "_background",
    "louis-braille": "?", "solar_system": "?", "gravity": "?",
}
TUX_SKIP = ("cartoon", "easter", "roadsigns", "newyears", "clothes")  # drawings, or near it
OPENCV_SKIP = ("HappyFish", "WindowsLogo", "LinuxLogo", "opencv-logo", "gradient", "chessboard",
               "fuzzy/", "pic")
# OpenCV files that are one scene: stereo pairs, consecutive frames, an object and its scene.
OPENCV_SAME = (("aero1", "aero3"), ("aloeL", "aloeR"), ("basketball1", "basketball2"),
               ("graf1", "graf3"), ("leuvenA", "leuvenB"), ("rubberwhale1", "rubberwhale2"),
               ("box", "box_in_scene"))
_CALIBRATION = re.compile(r"^(left|right)\d*$")  # one chessboard, filmed in stereo


@dataclass(frozen=True)
class Photo:
    path: Path
    source: str  # the package it came from
    same_as: str  # files with one same_as show one picture, by their names (else the name)


def _keep(folder: Path, name: str, image: Image.Image, source: str,
          same_as: str | None = None) -> Photo:
    image = flatten(image)
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    path = folder / f"{name}.jpg"
    image.save(path, "JPEG", quality=92)
    return Photo(path, source, same_as or name)


def real_photos(folder: Path, packages: dict[str, Path | None]) -> list[Photo]:
    """The photos of the packages found, written to ``folder`` (flattened, JPEG), with the name
    rules: Tux Paint's ``x_mirror`` stamp is ``x`` mirrored; OpenCV's calibration frames (one
    chessboard, filmed in stereo) and :data:`OPENCV_SAME` are one scene each."""
    folder.mkdir(parents=True)
    photos = []
    if (gcompris := packages[GCOMPRIS]) is not None:
        for activity, rule in GCOMPRIS_PHOTOS.items():
            rcc = read_rcc(gcompris / "usr/share/gcompris-qt/rcc" / f"{activity}.rcc")
            for path in sorted(p for p in rcc if p.lower().endswith((".webp", ".jpg", ".png"))):
                stem = Path(path).stem
                image = Image.open(io.BytesIO(rcc[path]))
                if (min(image.size) < MIN_SIDE or (rule == "?" and is_clipart(image))
                        or (rule not in ("", "?") and not (stem.startswith(rule)
                                                          or stem.endswith(rule)))):
                    continue
                name = path.split("/resource/")[-1].rsplit(".", 1)[0].replace("/", "_")
                photos.append(_keep(folder, f"gc-{activity}-{name}", image, "GCompris"))
    if (tux := packages[TUX]) is not None:
        for png in sorted((tux / _STAMPS).rglob("*.png")):
            rel = str(png.relative_to(tux / _STAMPS))[:-4]
            with Image.open(png) as image:
                image.load()
                if any(s in rel for s in TUX_SKIP) or min(image.size) < MIN_SIDE or \
                        is_clipart(image):
                    continue
                photos.append(_keep(folder, "tux-" + rel.replace("/", "_"), image, "Tux Paint",
                                    "tux:" + rel.removesuffix("_mirror")))
    if (opencv := packages[OPENCV]) is not None:
        for file in sorted((opencv / _EXAMPLES).rglob("*")):
            rel = str(file.relative_to(opencv / _EXAMPLES))
            if file.suffix.lower() not in (".jpg", ".png") or file.stem.endswith("_mask") or \
                    any(rel.startswith(s) or file.stem.startswith(s) for s in OPENCV_SKIP):
                continue
            with Image.open(file) as image:
                image.load()
                if min(image.size) < MIN_SIDE or is_clipart(image):
                    continue
                same = next((f"cv:{a}" for a, b in OPENCV_SAME if file.stem in (a, b)), None)
                if rel.startswith("data/") and _CALIBRATION.match(file.stem):
                    same = "cv:calibration"
                name = "cv-" + rel.rsplit(".", 1)[0].replace("/", "_")
                photos.append(_keep(folder, name, image, "OpenCV", same))
    return photos


def _p2000_sources(folder: Path, photos_2000: Path) -> list[Path]:
    """The photos photos-2000 was cropped from (its file ``i`` from source ``i mod S``), saved
    to ``folder`` so they can be checked against the real photos like any file."""
    from photos import load_sources

    folder.mkdir(parents=True)
    built_from = json.loads((photos_2000 / "photos.json").read_text())["sources"]
    sources = load_sources()
    if [s.name for s in sources] != built_from:
        raise SystemExit(f"cdheavy: {photos_2000} was built from other sources than are found "
                         "now; delete it and run again to rebuild it.")
    paths = []
    for k, source in enumerate(sources):
        image = source.image.copy()
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        paths.append(folder / f"source-{k:02d}.jpg")
        image.save(paths[-1], "JPEG", quality=92)
    return paths


def _heavy_copy(path: Path, out: Path, name: str, key: list[int]) -> Path:
    with Image.open(path) as image:
        image.draft("RGB", (MAX_SIDE, MAX_SIDE))
        web_copy = image.convert("RGB")
    web_copy.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    edited, _ = apply_edit(name, web_copy, np.random.default_rng(key), HEAVY)
    edited.save(out, "JPEG", quality=95)
    return out


def _pixels(path: Path) -> int:
    with Image.open(path) as image:
        return image.size[0] * image.size[1]


def _groups(photos: list[Photo], sources: list[Path]) -> tuple[list[Path], list[int], list]:
    """(files, a group id per file, the same-picture matches) of the real photos and of
    photos-2000's sources; the matches are also written to matches.json, to look at."""
    files = [p.path for p in photos] + sources
    log(f"cdheavy: {len(photos)} real photos; looking for files that show one picture")
    vectors = embed_files(files, load_embedder(CANDIDATE_MODEL), show_progress=False).vectors
    by_rule: dict[str, list[int]] = {}
    for i, photo in enumerate(photos):
        by_rule.setdefault(photo.same_as, []).append(i)
    asserted = [(rows[0], r) for rows in by_rule.values() for r in rows[1:]]
    matches = same_picture(files, vectors, asserted=asserted)
    (FOLDER / "matches.json").write_text("[\n" + ",\n".join(json.dumps(
        {"a": files[m.a].name, "b": files[m.b].name, "how": m.how, "inliers": m.inliers,
         "aligned": round(m.aligned, 3), "same": m.same}) for m in matches) + "\n]\n")
    return files, components(len(files), [(m.a, m.b) for m in matches if m.same]), matches


def ensure_cd_heavy(seed: int = 0) -> CopyDetectionSet:
    """The CD-heavy set (built first if needed; see the module docstring)."""
    packages = {name: _package(name) for name in (GCOMPRIS, TUX, OPENCV)}
    recipe = {"version": HEAVY_SET_VERSION, "seed": seed, "distractors": DISTRACTORS,
              "packages": sorted(n for n, p in packages.items() if p),
              "heavy": json.loads(json.dumps(asdict(HEAVY))),  # as the manifest holds it
              "same_picture": RULES}
    if _fresh(FOLDER, recipe):
        return load_copydetect(FOLDER / "set")
    if not recipe["packages"]:
        raise SystemExit("cdheavy: none of gcompris-qt-data, tuxpaint-stamps-default and "
                         "opencv-doc could be downloaded (is apt reachable?); no CD-heavy set.")
    shutil.rmtree(FOLDER, ignore_errors=True)
    photos = real_photos(FOLDER / "photos", packages)
    p2000_folder = ensure_distractors()
    p2000 = sorted(p2000_folder.glob("photo-*.jpg"))
    sources = _p2000_sources(FOLDER / "p2000-sources", p2000_folder)
    files, label, matches = _groups(photos, sources)

    # Pictures (groups of real photos) in a seeded order: the first HELD_OUT are distractors,
    # the largest file of each other one is an original.
    rng = np.random.default_rng([seed, 2])
    members: dict[int, list[int]] = {}
    for i in range(len(photos)):
        members.setdefault(label[i], []).append(i)
    pictures = sorted(members)
    order = rng.permutation(len(pictures))
    held_out = round(HELD_OUT * len(pictures))
    held = [pictures[k] for k in order[:held_out]]
    originals = [max(members[pictures[k]], key=lambda i: _pixels(files[i]))
                 for k in order[held_out:]]
    chosen = set(originals)
    same_as_original = [j for i in originals for j in members[label[i]] if j not in chosen]
    held_files = [i for g in held for i in members[g]]
    near_dir = FOLDER / "near"
    near_dir.mkdir()
    near: list[tuple[Path, int]] = []  # (heavy copy, its picture)
    for k, g in enumerate(held):
        source = files[max(members[g], key=lambda i: _pixels(files[i]))]
        for c in range(NEAR_COPIES):
            name = SINGLES[(2 * k + c) % len(SINGLES)] if c < NEAR_COPIES // 2 else "chain"
            out = near_dir / f"{source.stem}-{c}-{name}.jpg"
            near.append((_heavy_copy(source, out, name, [seed, 3, k, c]), g))
    # photos-2000 fills the rest: half as they are, half heavy copies (single and chain in turn).
    left = DISTRACTORS - len(same_as_original) - len(held_files) - len(near)
    picked = sorted(rng.permutation(len(p2000))[:left].tolist())
    plain, edited = picked[:left // 2], picked[left // 2:]
    p2000_paths = [p2000[i] for i in plain]
    for j, i in enumerate(edited):
        name = SINGLES[(j // 2) % len(SINGLES)] if j % 2 == 0 else "chain"
        p2000_paths.append(_heavy_copy(p2000[i], near_dir / f"p2000-{i:05d}-{name}.jpg", name,
                                       [seed, 4, i]))
    of_source = [label[len(photos) + i % len(sources)] for i in [*plain, *edited]]
    distractors = ([files[i] for i in [*same_as_original, *held_files]]
                   + [p for p, _ in near] + p2000_paths)
    groups = ([label[i] for i in [*originals, *same_as_original, *held_files]]
              + [g for _, g in near] + of_source)
    log(f"cdheavy: {len(originals)} originals, {len(distractors)} distractors; writing queries")
    dataset = write_copydetect(
        FOLDER / "set", [files[i] for i in originals], distractors,
        cycles=[SINGLES, ["chain"]], seed=seed, heavy=True, groups=groups,
        about={"set": "CD-heavy", "version": HEAVY_SET_VERSION})
    source_of = {p.path: p.source for p in photos}
    shared = sorted({files[len(photos) + k].name for k in range(len(sources))
                     if label[len(photos) + k] < len(photos)})
    made_of = {
        "real photos": dict(Counter(p.source for p in photos)),
        "pictures": len(pictures),
        "pictures with several files": sum(len(m) > 1 for m in members.values()),
        "same-picture pairs": dict(Counter(m.how for m in matches if m.same)),
        "near misses (looked at, not grouped)": sum(not m.same for m in matches),
        "originals": dict(Counter(source_of[files[i]] for i in originals)),
        "queries": dict(Counter("chain" if q.edit == "chain" else "single"
                                for q in dataset.queries)),
        "distractors": {
            "other files of an original's picture": len(same_as_original),
            "real photos of held-out pictures": len(held_files),
            "heavy copies of held-out real photos": len(near),
            "photos-2000": len(plain),
            "photos-2000, heavily edited": len(edited),
        },
        "photos-2000 sources showing a real photo's picture": shared,
    }
    (FOLDER / "composition.json").write_text(json.dumps(made_of, indent=1) + "\n")
    _finish(FOLDER, recipe)
    return dataset


def composition() -> dict:
    """What the cached CD-heavy set is made of (sources, pictures, distractor kinds)."""
    return json.loads((FOLDER / "composition.json").read_text())


def main() -> None:
    dataset = ensure_cd_heavy()
    print(f"CD-heavy: {dataset.root}: {len(dataset.queries)} queries, {dataset.originals} "
          f"originals, {len(dataset.database)} database images")
    print(json.dumps(composition(), indent=1))


if __name__ == "__main__":
    main()
