"""A reproducible benchmark photo set: N real-photo JPEGs of at least 1 megapixel each.

Sources are real photographs that ship offline: scikit-image's sample photos and the photographic
wallpapers of three Debian packages (fetched with ``apt-get download`` and unpacked with
``dpkg -x``, never installed; cached under ``benchmarks/out/sources``). Image ``i`` is a seeded
random crop, flip, colour jitter and resize (1,200-2,000 px on the long side, >= 1 MP) of source
``i mod S``, saved as JPEG with a seeded quality (85-95) and chroma subsampling. The same seed and
sources give byte-identical files; image ``i`` does not depend on N.

    python benchmarks/photos.py                  # 2,000 photos into benchmarks/out/photos-2000
    python benchmarks/photos.py -n 10000         # 10,000 photos into benchmarks/out/photos-10000

From other benchmarks: ``from photos import ensure_photos; paths = ensure_photos(2000)``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

OUT = Path(__file__).resolve().parent / "out"
SET_VERSION = 1  # bump when the recipe changes, so cached sets are rebuilt
MIN_PIXELS = 1_000_000
MAX_SOURCE_SIDE = 2560  # sources are downscaled to this once; outputs are at most 2,000 px

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "motorcycle", "camera", "moon", "coins",
                  "clock")

# Debian packages with photographs, and the files in them that are photos (not illustrations).
_LOMIRI = "usr/share/backgrounds/"
_MATE = "usr/share/backgrounds/mate/nature/"
DEBIAN_PHOTOS: dict[str, tuple[str, ...]] = {
    "lomiri-wallpapers-16.04": tuple(_LOMIRI + name + ".jpg" for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
        "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
        "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
    )),
    "mate-backgrounds": tuple(_MATE + name + ".jpg" for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops",
        "Storm", "TwoWings", "Wood", "YellowFlower",
    )),
    # KDE wallpapers come in several sizes: the largest JPEG of each folder is used.
    "plasma-workspace-wallpapers": tuple(
        f"usr/share/wallpapers/{name}/contents/images" for name in (
            "BytheWater", "ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf", "Grey",
            "Kite", "OneStandsOut", "Path", "summer_1am",
        )
    ),
}


@dataclass(frozen=True)
class Source:
    name: str
    image: Image.Image  # RGB, long side <= MAX_SOURCE_SIDE


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- sources -------------------------------------------------------------------------------------


def _skimage_sources() -> list[Source]:
    from skimage import data

    sources = []
    for name in SKIMAGE_PHOTOS:
        array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        sources.append(Source(f"skimage:{name}", Image.fromarray(array).convert("RGB")))
    return sources


def _unpack(package: str, cache: Path) -> Path:
    """``cache/package``, holding the package's files (downloaded and unpacked once)."""
    dest = cache / package
    if (dest / ".unpacked").is_file():
        return dest
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(["apt-get", "download", package], cwd=tmp, check=True,
                       capture_output=True, text=True, timeout=300)
        debs = sorted(Path(tmp).glob("*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} produced no .deb file")
        shutil.rmtree(dest, ignore_errors=True)
        subprocess.run(["dpkg", "-x", str(debs[0]), str(dest)], check=True, capture_output=True,
                       text=True, timeout=300)
    (dest / ".unpacked").touch()
    return dest


def _largest_jpeg(folder: Path) -> Path:
    def pixels(path: Path) -> int:
        with Image.open(path) as im:
            return im.size[0] * im.size[1]

    candidates = sorted(folder.glob("*.jpg"))
    if not candidates:
        raise FileNotFoundError(f"no JPEG in {folder}")
    return max(candidates, key=pixels)


def _open_source(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.draft("RGB", (MAX_SOURCE_SIDE, MAX_SOURCE_SIDE))  # JPEG: decode at a reduced scale
        rgb = im.convert("RGB")
    if max(rgb.size) > MAX_SOURCE_SIDE:
        rgb.thumbnail((MAX_SOURCE_SIDE, MAX_SOURCE_SIDE), Image.Resampling.LANCZOS)
    return rgb


def _debian_sources(cache: Path) -> list[Source]:
    """The Debian photos, or none (with the reason on stderr) when they cannot be fetched."""
    cache.mkdir(parents=True, exist_ok=True)
    sources = []
    for package, files in DEBIAN_PHOTOS.items():
        try:
            root = _unpack(package, cache)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or exc
            log(f"photos: cannot fetch Debian package {package} ({str(detail).strip()}); "
                "falling back to the other sources")
            continue
        for rel in files:
            path = root / rel
            try:
                if path.is_dir():
                    path = _largest_jpeg(path)
                sources.append(Source(f"{package}:{path.relative_to(root)}", _open_source(path)))
            except OSError as exc:
                log(f"photos: skipping {package}:{rel} ({exc})")
    return sources


def load_sources(cache: Path | None = None, *, debian: bool = True) -> list[Source]:
    """All source photos in a fixed order: scikit-image's, then the Debian packages'."""
    sources = _skimage_sources()
    if debian:
        found = _debian_sources(cache or OUT / "sources")
        if not found:
            log("photos: no Debian photos available; using scikit-image's photos only")
        sources += found
    return sources


# -- one benchmark photo ---------------------------------------------------------------------------


def make_photo(source: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int, int]:
    """A random crop/flip/jitter of ``source``, >= 1 MP; returns (image, quality, subsampling)."""
    width, height = source.size
    crop_w = max(16, round(width * rng.uniform(0.55, 1.0)))
    crop_h = max(16, round(height * rng.uniform(0.55, 1.0)))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = source.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer, low, high in ((ImageEnhance.Brightness, 0.75, 1.25),
                                (ImageEnhance.Contrast, 0.75, 1.25),
                                (ImageEnhance.Color, 0.6, 1.4)):
        image = enhancer(image).enhance(float(rng.uniform(low, high)))
    long_side = int(rng.integers(1200, 2001))
    scale = long_side / max(crop_w, crop_h)
    if crop_w * crop_h * scale * scale < MIN_PIXELS:  # a very elongated crop: grow to 1 MP
        scale = (MIN_PIXELS / (crop_w * crop_h)) ** 0.5 * 1.001
    size = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    quality = int(rng.integers(85, 96))
    subsampling = 0 if rng.random() < 0.25 else 2  # 4:4:4 or 4:2:0
    return image, quality, subsampling


_SOURCES: list[Source] = []  # set in the parent before forking the pool


def _write_one(task: tuple[int, int, str]) -> int:
    index, seed, folder = task
    path = Path(folder) / f"photo-{index:05d}.jpg"
    if path.is_file():
        return index
    rng = np.random.default_rng([seed, index])
    source = _SOURCES[index % len(_SOURCES)].image
    image, quality, subsampling = make_photo(source, rng)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, "JPEG", quality=quality, subsampling=subsampling)
    os.replace(tmp, path)
    return index


def photo_dir(count: int, out: Path | None = None) -> Path:
    return out or OUT / f"photos-{count}"


def ensure_photos(count: int = 2000, *, seed: int = 0, out: Path | None = None,
                  debian: bool = True, processes: int | None = None) -> list[Path]:
    """The paths of the benchmark photo set, building (or completing) it first if needed."""
    global _SOURCES
    folder = photo_dir(count, out)
    manifest_path = folder / "photos.json"
    paths = [folder / f"photo-{i:05d}.jpg" for i in range(count)]
    wanted = {"version": SET_VERSION, "count": count, "seed": seed}
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if old.get("complete") and {k: old.get(k) for k in wanted} == wanted and all(
        p.is_file() for p in paths
    ):
        return paths
    _SOURCES = load_sources(debian=debian)
    recipe = {**wanted, "sources": [s.name for s in _SOURCES]}
    if {k: old.get(k) for k in ("version", "seed", "sources")} != {
        k: recipe[k] for k in ("version", "seed", "sources")
    }:  # files of another recipe (or of unknown origin): start again
        for stale in folder.glob("photo-*.jpg"):
            stale.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps({**recipe, "complete": False}, indent=2) + "\n")
    started = time.perf_counter()
    log(f"photos: writing {count:,} photos from {len(_SOURCES)} sources into {folder}")
    tasks = [(i, seed, str(folder)) for i in range(count)]
    context = multiprocessing.get_context("fork")  # the workers inherit the decoded sources
    with context.Pool(processes or os.cpu_count() or 1) as pool:
        for done, _ in enumerate(pool.imap_unordered(_write_one, tasks, chunksize=16), start=1):
            if done % 500 == 0 or done == count:
                log(f"photos: {done:,}/{count:,} ({time.perf_counter() - started:.0f} s)")
    _SOURCES = []
    manifest_path.write_text(json.dumps({**recipe, "complete": True}, indent=2) + "\n")
    return paths


def describe(paths: list[Path]) -> dict[str, float]:
    """Size statistics of a photo set (megapixels and file sizes)."""
    megapixels, sizes = [], []
    for path in paths:
        with Image.open(path) as im:
            megapixels.append(im.size[0] * im.size[1] / 1e6)
        sizes.append(path.stat().st_size / 1e6)
    return {"images": len(paths), "mp_min": min(megapixels), "mp_median": float(np.median(
        megapixels)), "mp_max": max(megapixels), "mb_median": float(np.median(sizes)),
        "mb_total": float(sum(sizes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--count", type=int, default=2000, help="number of photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder (default benchmarks/out/photos-N)")
    parser.add_argument("--no-debian", action="store_true", help="scikit-image photos only")
    args = parser.parse_args()
    paths = ensure_photos(args.count, seed=args.seed, out=args.out, debian=not args.no_debian)
    manifest = json.loads((paths[0].parent / "photos.json").read_text())
    stats = describe(paths)
    print(f"| photo set | {paths[0].parent} |\n|---|---|")
    print(f"| images | {stats['images']:,} |")
    print(f"| sources | {len(manifest['sources'])} real photos "
          f"({sum(s.startswith('skimage:') for s in manifest['sources'])} scikit-image, "
          f"{sum(not s.startswith('skimage:') for s in manifest['sources'])} Debian) |")
    print(f"| megapixels min / median / max | {stats['mp_min']:.2f} / {stats['mp_median']:.2f} / "
          f"{stats['mp_max']:.2f} |")
    print(f"| file size median / total | {stats['mb_median']:.2f} MB / "
          f"{stats['mb_total']:,.0f} MB |")


if __name__ == "__main__":
    main()
