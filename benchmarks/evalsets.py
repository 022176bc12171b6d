"""Evaluation sets for `lookalike eval` and bench_quality.py, from real photos that ship offline.

* ``labelled``: a labelled folder (one sub-folder per class) of real photographs from two Debian
  packages, fetched with ``apt-get download`` and unpacked with ``dpkg -x`` (never installed):
  the photo stamps of Tux Paint (``tuxpaint-stamps-default``: cut-out photos of birds, fruit,
  flowers... with alpha, flattened onto white; clip-art stamps are recognised by their few flat
  colours and left out) and the photo sets of GCompris's activities (``gcompris-qt-data``:
  fish, monuments, windmills, solar panels, hand tools..., read from its Qt resource files).
  Classes are mutually exclusive concepts; a class is capped at 40 images by a seeded sample.
* ``cd-originals``: distinct real photographs for copy detection (GCompris's scene photos:
  wildlife, monuments, fish, tools, energy...), near-identical files removed by a difference
  hash. Their distractors are benchmarks/photos.py's 2,000 photos, which share no source with
  them. (photos-2000 alone is the harder set: its photos are crops of 47 sources, so the
  distractors include other crops of a query's own source.)
* ``cd-heavy``: a whole copy-detection set at least as hard as a held-out one (heavy edits,
  chains, near-copy distractors, files of one picture grouped): benchmarks/cdheavy.py.

Everything is cached under benchmarks/out/evalsets and rebuilt only when SET_VERSION changes.
When a package cannot be downloaded the set is built from what is available, saying so on stderr.

    python benchmarks/evalsets.py        # build the sets, print their sizes
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import _unpack  # noqa: E402  (benchmarks are scripts, not a package)

if TYPE_CHECKING:
    from lookalike.evaluation import CopyDetectionSet

OUT = Path(__file__).resolve().parent / "out"
SETS = OUT / "evalsets"
SOURCES = OUT / "sources"
SET_VERSION = 1
MAX_PER_CLASS = 40
MIN_PER_CLASS = 3
LABELLED_SIDE = 512  # labelled images are stored with this long side at most

TUX = "tuxpaint-stamps-default"
GCOMPRIS = "gcompris-qt-data"
_STAMPS = "usr/share/tuxpaint/stamps/"
_RCC = "usr/share/gcompris-qt/rcc/"
_CAT = "gcompris/src/activities/categorization/resource/images/"

# class -> Tux Paint stamp folders whose own files (not sub-folders: those hold cartoons) are
# photos of that class.
TUX_CLASSES: dict[str, tuple[str, ...]] = {
    "birds": ("animals/birds",),
    "insects": ("animals/insects",),
    "bovines": ("animals/mammals/bovines",),
    "rodents": ("animals/mammals/rodents",),
    "other-mammals": ("animals/mammals", "animals/mammals/apes", "animals/mammals/aquatic",
                      "animals/mammals/bears", "animals/mammals/camel", "animals/mammals/cats",
                      "animals/mammals/deer", "animals/mammals/dogs", "animals/mammals/equines"),
    "fish": ("animals/fish",),
    "fruit": ("food/fruit",),
    "vegetables": ("food/vegetables",),
    "flowers": ("plants/flowers",),
    "trees": ("plants/trees",),
    "instruments": ("hobbies/music/brass", "hobbies/music/percussion", "hobbies/music/string",
                    "hobbies/music/wind"),
    "planets": ("space/planets", "space/moon"),
    "balls": ("sports",),
}

# class -> (resource file, path prefix inside it) of GCompris photos of that class.
GCOMPRIS_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    "fish": (("categorization", _CAT + "fishes/"),),
    "monuments": (("categorization", _CAT + "monuments/"),
                  ("explore_monuments", "gcompris/src/activities/explore_monuments/resource/")),
    "windmills": (("categorization", _CAT + "renewable/windmill"),),
    "solar-panels": (("categorization", _CAT + "renewable/solar"),),
    "dams": (("categorization", _CAT + "renewable/dam"),),
    "hammers": (("categorization", _CAT + "tools/hammer"),),
    "measuring-tapes": (("categorization", _CAT + "tools/measuringTape"),),
    "pliers": (("categorization", _CAT + "tools/plier"), ("categorization", _CAT + "tools/side")),
    "screwdrivers": (("categorization", _CAT + "tools/screwDriver"),),
    "scissors": (("categorization", _CAT + "tools/scissors"),),
    "multimeters": (("categorization", _CAT + "tools/multimeter"),),
}

# GCompris resources holding distinct scene photographs: copy-detection originals.
CD_ORIGINALS: tuple[tuple[str, str], ...] = (
    ("erase", "gcompris/src/activities/erase/resource/"),
    ("explore_world_animals", "gcompris/src/activities/explore_world_animals/resource/"),
    ("explore_farm_animals", "gcompris/src/activities/explore_farm_animals/resource/"),
    ("explore_monuments", "gcompris/src/activities/explore_monuments/resource/"),
    ("explore_world_music", "gcompris/src/activities/explore_world_music/resource/"),
    ("clickgame", "gcompris/src/activities/clickgame/resource/"),
    ("categorization", _CAT + "fishes/"),
    ("categorization", _CAT + "monuments/"),
    ("categorization", _CAT + "renewable/"),
    ("categorization", _CAT + "tools/"),
    ("categorization", _CAT + "others/"),
)
_PHOTO_EXTENSIONS = (".webp", ".jpg", ".jpeg", ".png")
_CD_MIN_SIDE = 150  # smaller resources are icons and thumbnails, not photos


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- reading the packages --------------------------------------------------------------------


def read_rcc(path: Path) -> dict[str, bytes]:
    """The files in a Qt binary resource (``.rcc``) file, by path (zlib/zstd data inflated)."""
    data = path.read_bytes()
    if data[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource file")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    node = 22 if version >= 2 else 14  # version 2 added an 8-byte modification time per node

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset:names + offset + 2])
        return data[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}
    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * node
        name_offset, flags = struct.unpack(">IH", data[at:at + 6])
        name = name_at(name_offset) if index else ""
        path_here = f"{prefix}{name}"
        if flags & 2:  # a directory: child count, first child index
            count, first = struct.unpack(">II", data[at + 6:at + 14])
            stack += [(first + c, f"{path_here}/" if index else "") for c in range(count)]
            continue
        (offset,) = struct.unpack(">I", data[at + 10:at + 14])
        (size,) = struct.unpack(">I", data[payload + offset:payload + offset + 4])
        raw = data[payload + offset + 4:payload + offset + 4 + size]
        if flags & 1:
            raw = zlib.decompress(raw[4:])  # qCompress: 4-byte length, then zlib
        elif flags & 4:
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 28)
        files[path_here] = raw
    return files


def _package(name: str) -> Path | None:
    SOURCES.mkdir(parents=True, exist_ok=True)
    try:
        return _unpack(name, SOURCES)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log(f"evalsets: cannot fetch Debian package {name} ({str(detail).strip()}); "
            "building the set without it")
        return None


def _gcompris_files(root: Path, resource: str, prefix: str) -> Iterator[tuple[str, bytes]]:
    files = read_rcc(root / _RCC / f"{resource}.rcc")
    for path in sorted(files):
        if path.startswith(prefix) and path.lower().endswith(_PHOTO_EXTENSIONS):
            yield path, files[path]


# -- images ----------------------------------------------------------------------------------


def is_clipart(image: Image.Image) -> bool:
    """True for drawings: their 8 most common colours cover most of the opaque pixels."""
    rgba = image.convert("RGBA")
    rgba.thumbnail((256, 256))
    pixels = np.asarray(rgba)
    opaque = pixels[pixels[..., 3] > 200][:, :3].astype(np.int64) // 8
    if len(opaque) == 0:
        return True
    codes = opaque[:, 0] * 1024 + opaque[:, 1] * 32 + opaque[:, 2]
    counts = np.sort(np.unique(codes, return_counts=True)[1])[::-1]
    return counts[:8].sum() / len(codes) > 0.6


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def dhash(image: Image.Image) -> int:
    """A 64-bit difference hash: near-identical images differ in a few bits."""
    grey = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def _distinct(items: list[tuple[str, Image.Image]], bits: int = 6) -> list[tuple[str, Image.Image]]:
    """``items`` without those within ``bits`` of an earlier one's difference hash."""
    kept: list[tuple[str, Image.Image]] = []
    hashes: list[int] = []
    for name, image in items:
        h = dhash(image)
        if all(bin(h ^ other).count("1") > bits for other in hashes):
            kept.append((name, image))
            hashes.append(h)
    return kept


def _write(image: Image.Image, path: Path, max_side: int | None) -> None:
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    image.save(path, "JPEG", quality=92)


def _fresh(folder: Path, recipe: dict) -> bool:
    manifest = folder / "evalset.json"
    return manifest.is_file() and json.loads(manifest.read_text()) == {**recipe, "complete": True}


def _finish(folder: Path, recipe: dict) -> None:
    (folder / "evalset.json").write_text(json.dumps({**recipe, "complete": True}, indent=1) + "\n")


# -- the sets --------------------------------------------------------------------------------


def _labelled_images(tux: Path | None, gcompris: Path | None
                     ) -> dict[str, list[tuple[str, Image.Image]]]:
    classes: dict[str, list[tuple[str, Image.Image]]] = {}
    if tux is not None:
        for label, folders in TUX_CLASSES.items():
            for folder in folders:
                for png in sorted((tux / _STAMPS / folder).glob("*.png")):
                    with Image.open(png) as im:
                        im.load()
                        if not is_clipart(im):
                            classes.setdefault(label, []).append((f"tux-{png.stem}", flatten(im)))
    if gcompris is not None:
        for label, sources in GCOMPRIS_CLASSES.items():
            for resource, prefix in sources:
                for path, raw in _gcompris_files(gcompris, resource, prefix):
                    image = flatten(Image.open(io.BytesIO(raw)))
                    classes.setdefault(label, []).append((f"gc-{Path(path).stem}", image))
    return classes


def ensure_labelled(seed: int = 0) -> Path:
    """The labelled folder (built first if needed): one sub-folder per class."""
    tux, gcompris = _package(TUX), _package(GCOMPRIS)
    recipe = {"version": SET_VERSION, "seed": seed, "tux": tux is not None,
              "gcompris": gcompris is not None}
    folder = SETS / "labelled"
    if _fresh(folder, recipe):
        return folder
    if tux is None and gcompris is None:
        raise SystemExit("evalsets: neither tuxpaint-stamps-default nor gcompris-qt-data could "
                         "be downloaded (is apt reachable?); no labelled set can be built.")
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for label, items in sorted(_labelled_images(tux, gcompris).items()):
        items = _distinct(items)
        if len(items) < MIN_PER_CLASS:
            continue
        if len(items) > MAX_PER_CLASS:
            picked = sorted(rng.choice(len(items), MAX_PER_CLASS, replace=False))
            items = [items[i] for i in picked]
        (folder / label).mkdir(parents=True)
        for name, image in items:
            _write(image, folder / label / f"{name}.jpg", LABELLED_SIDE)
    _finish(folder, recipe)
    return folder


def ensure_cd_originals() -> Path | None:
    """Distinct real photos for copy-detection originals, or None without GCompris's data."""
    gcompris = _package(GCOMPRIS)
    if gcompris is None:
        return None
    recipe = {"version": SET_VERSION}
    folder = SETS / "cd-originals"
    if _fresh(folder, recipe):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    items = []
    for resource, prefix in CD_ORIGINALS:
        for path, raw in _gcompris_files(gcompris, resource, prefix):
            image = Image.open(io.BytesIO(raw))
            if min(image.size) >= _CD_MIN_SIDE:
                items.append((f"{resource}-{Path(path).stem}", flatten(image)))
    for name, image in _distinct(items):
        _write(image, folder / f"{name}.jpg", None)
    _finish(folder, recipe)
    return folder


def ensure_cd_heavy(seed: int = 0) -> CopyDetectionSet:
    """The CD-heavy copy-detection set (built first if needed): benchmarks/cdheavy.py."""
    from cdheavy import ensure_cd_heavy as build

    return build(seed)


def ensure_distractors() -> Path:
    """benchmarks/photos.py's 2,000 photos (built first if needed)."""
    from photos import ensure_photos

    return ensure_photos(2000)[0].parent


def main() -> None:
    labelled = ensure_labelled()
    originals = ensure_cd_originals()
    distractors = ensure_distractors()
    counts = {p.name: len(list(p.glob("*.jpg"))) for p in sorted(labelled.iterdir()) if p.is_dir()}
    print(f"labelled: {labelled}: {sum(counts.values())} images in {len(counts)} classes")
    print("  " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    if originals is not None:
        print(f"copy-detection originals: {originals}: {len(list(originals.glob('*.jpg')))} "
              "distinct photos")
    print(f"copy-detection distractors: {distractors}: "
          f"{len(list(distractors.glob('*.jpg')))} photos")
    heavy = ensure_cd_heavy()
    print(f"CD-heavy: {heavy.root}: {len(heavy.queries)} queries, {heavy.originals} originals, "
          f"{len(heavy.database)} database images (composition: python benchmarks/cdheavy.py)")


if __name__ == "__main__":
    main()
