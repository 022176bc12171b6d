"""`lookalike demo`: real photos that ship offline, edited copies of them, and what search finds.

The photos are scikit-image's sample images. Each gets six edited copies (crop, rotation, heavy
JPEG recompression, colour shift, greyscale, text overlay); the originals are indexed, every
edited copy is used as a query, and its original must come back at rank 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from .errors import MissingDependencyError

# scikit-image sample photos bundled with the package (no download needed). data.cat() is
# chelsea again and the right stereo view is a near copy of the left, so they are left out.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "moon", "coins", "brick", "grass",
          "gravel", "page", "clock", "cell", "text", "motorcycle")


def _load_skimage(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise MissingDependencyError(
            "scikit-image", "The demo's sample photos", "pip install 'lookalike[demo]'"
        ) from None
    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def sample_photos(folder: Path) -> list[Path]:
    """Write the sample photos as JPEG files into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        path = folder / f"{name}.jpg"
        if not path.exists():
            Image.fromarray(_load_skimage(name)).convert("RGB").save(path, quality=92)
        paths.append(path)
    return paths


def _crop(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.crop((int(w * 0.12), int(h * 0.10), int(w * 0.82), int(h * 0.85)))


def _rotate(im: Image.Image) -> Image.Image:
    return im.rotate(12, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=(0, 0, 0))


def _colour(im: Image.Image) -> Image.Image:
    shifted = ImageEnhance.Color(im).enhance(1.8)
    r, g, b = shifted.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, v + 30)), g, b.point(lambda v: v * 0.8)))


def _grey(im: Image.Image) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def _text(im: Image.Image) -> Image.Image:
    out = im.copy()
    draw = ImageDraw.Draw(out)
    size = max(14, im.size[1] // 9)
    font = ImageFont.load_default(size=size)
    draw.text((im.size[0] // 20, im.size[1] // 3), "lookalike © 2026", fill=(255, 255, 0),
              font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return out


# Name -> (edit, JPEG quality the copy is saved with).
EDITS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    "crop": (_crop, 90),
    "rotate": (_rotate, 90),
    "jpeg": (lambda im: im, 15),
    "colour": (_colour, 90),
    "grey": (_grey, 90),
    "text": (_text, 90),
}


def edited_copies(originals: list[Path], folder: Path) -> list[tuple[str, Path, Path]]:
    """Write every edit of every original into ``folder``: (edit, original, copy) triples."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for original in originals:
        image = Image.open(original).convert("RGB")
        for edit, (function, quality) in EDITS.items():
            path = folder / f"{original.stem}__{edit}.jpg"
            if not path.exists():
                function(image).save(path, quality=quality)
            copies.append((edit, original, path))
    return copies


def run_demo(out: str) -> None:
    from .collection import Collection

    root = Path(out)
    originals = sample_photos(root / "photos")
    copies = edited_copies(originals, root / "queries")
    click.echo(f"{len(originals)} sample photos in {root / 'photos'}, "
               f"{len(copies)} edited copies in {root / 'queries'}\n")
    col = Collection.open_or_create(root / "collection")
    report = col.index([root / "photos"], show_progress=sys.stderr.isatty())
    click.echo(f"Indexed {report.added} photos ({report.unchanged} already there) "
               f"into {root / 'collection'}\n")

    click.echo(f"{'query (edited copy)':<36} {'original at':>11} {'score':>6}   "
               "nearest different photo (score)")
    found_at_1: dict[str, int] = dict.fromkeys(EDITS, 0)
    latencies = []
    for edit, original, query in copies:
        start = time.perf_counter()
        hits = col.search(query, k=10)
        latencies.append(time.perf_counter() - start)
        names = [Path(h.uri).name for h in hits]
        rank = names.index(original.name) + 1 if original.name in names else None
        found_at_1[edit] += rank == 1
        other = next(h for h in hits if Path(h.uri).name != original.name)
        where = f"rank {rank}" if rank else "not in 10"
        score = f"{hits[rank - 1].score:6.3f}" if rank else "     -"
        click.echo(f"{query.name:<36} {where:>11} {score}   "
                   f"{Path(other.uri).stem} ({other.score:.3f})")
    total = sum(found_at_1.values())
    per_photo = len(originals)
    click.echo(f"\n{total}/{len(copies)} edited copies found their original at rank 1; by edit: "
               + ", ".join(f"{e} {n}/{per_photo}" for e, n in found_at_1.items()))
    click.echo(f"Median query {np.percentile(latencies, 50) * 1000:.1f} ms "
               "(decode + embed + search, one image at a time).")
    click.echo(f"\nTry it:  lookalike search {copies[0][2]} --collection {root / 'collection'}")
    click.echo(f"   or:   lookalike serve --collection {root / 'collection'}   "
               "(then open http://127.0.0.1:8000/ and drop a photo)")
    col.close()
