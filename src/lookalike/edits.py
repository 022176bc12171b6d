"""What people do to a photo before re-posting it: the edits of copy-detection queries
(:mod:`lookalike.evaluation`) and of the copies `lookalike learn` learns from.

Each edit takes an RGB PIL image, a numpy ``Generator`` and the :class:`Ranges` its parameters
are drawn from, and returns the edited RGB image and a short description of the parameters it
drew (for the manifest). Everything random comes from the generator, so the same seed always gives
the same pixels. :data:`EDITS` names the edits, once; two sets of ranges use them:

* :data:`STANDARD` (the default): crops keep 50-90 % of the area, rotations are 5-30 degrees
  either way, JPEG quality 10-40, downscaling to 20-50 % per side, and a chain applies 2-4
  different edits in a row. Every edit draws exactly the random numbers, in the order, it drew
  before ranges existed, so sets built earlier are rebuilt byte for byte.
* :data:`HEAVY`: harder copies, with the ranges of a held-out set on which the default pipeline
  finds 0.88 at rank 1 (0.99 on standard copies): crops keep 25-80 %, JPEG quality 5-40, Gaussian
  blur σ 1-4 px at the models' 224-px input, stronger colour jitter and borders, and text comes
  with a caption bar (a solid band with words, as memes have).
  A heavy edit draws the numbers the standard one draws, in the same order; only text draws more
  (its caption bar's), after them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from .errors import UnknownNameError


@dataclass(frozen=True)
class Ranges:
    """The (low, high) ranges edits draw their parameters from, both ends included."""

    crop_area: tuple[float, float] = (0.5, 0.9)  # share of the area a crop keeps
    rotate_degrees: tuple[float, float] = (5.0, 30.0)  # either way
    jpeg_quality: tuple[int, int] = (10, 40)
    brightness_contrast: tuple[float, float] = (0.6, 1.4)
    saturation: tuple[float, float] = (0.3, 1.7)
    hue: float = 0.1  # ± a turn of the colour wheel
    #: Gaussian blur σ as a share of the shorter side: 0.005-0.015 is about 1-3.5 px at 224 px.
    blur_sigma: tuple[float, float] = (0.005, 0.015)
    scale_factor: tuple[float, float] = (0.2, 0.5)  # of each side
    text_lines: tuple[int, int] = (1, 3)
    text_size: tuple[float, float] = (0.06, 0.14)  # of the height, per line
    #: Height of a caption bar as a share of the image's (None: text without a bar).
    caption_bar: tuple[float, float] | None = None
    border: tuple[float, float] = (0.05, 0.2)  # of the size, each side independently
    chain_length: tuple[int, int] = (2, 4)


#: The ranges of the first copy-detection sets.
STANDARD = Ranges()
#: Harder copies (see the module docstring), and those `lookalike learn` learns from. Blur is
#: σ 1-4 px where the models look, at 224 px (the efficientnets squash the whole image to
#: 224 x 224; σ is measured along the shorter side): σ 3-12 px on a 1024 x 683 web copy. σ 1-4 px
#: of the web copy itself would be σ 0.3-1.3 px once the model has downscaled it: barely a blur.
HEAVY = Ranges(
    crop_area=(0.25, 0.8), jpeg_quality=(5, 40), brightness_contrast=(0.5, 1.5),
    saturation=(0.2, 1.8), hue=0.15, blur_sigma=(1 / 224, 4 / 224), caption_bar=(0.12, 0.3),
    border=(0.05, 0.25),
)

Edit = Callable[[Image.Image, np.random.Generator, Ranges], tuple[Image.Image, str]]

_WORDS = ("holiday", "2026", "© lookalike", "best day ever", "#nofilter", "sale", "wow",
          "repost", "meme", "family", "shared via app", "do not copy")


def crop(image: Image.Image, rng: np.random.Generator,
         ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """A random window keeping ``crop_area`` of the area (standard: 50-90 %), its aspect within
    3:4..4:3 of the image's."""
    width, height = image.size
    area = rng.uniform(*ranges.crop_area)
    stretch = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w_frac = min(1.0, math.sqrt(area * stretch))
    h_frac = min(1.0, area / w_frac)
    w, h = max(1, round(width * w_frac)), max(1, round(height * h_frac))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return image.crop((left, top, left + w, top + h)), f"area={w * h / (width * height):.2f}"


def rotate(image: Image.Image, rng: np.random.Generator,
           ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Rotation by ``rotate_degrees`` (5-30) either way; the canvas grows and the corners are
    filled black."""
    angle = float(rng.uniform(*ranges.rotate_degrees) * rng.choice([-1, 1]))
    rotated = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True,
                           fillcolor=(0, 0, 0))
    return rotated, f"angle={angle:.1f}"


def jpeg(image: Image.Image, rng: np.random.Generator,
         ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Re-encoding as JPEG at ``jpeg_quality`` (standard: 10-40; 4:2:0 chroma), decoded again."""
    low, high = ranges.jpeg_quality
    quality = int(rng.integers(low, high + 1))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB"), f"quality={quality}"


def colour(image: Image.Image, rng: np.random.Generator,
           ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Colour jitter; standard: brightness and contrast 0.6-1.4, saturation 0.3-1.7, hue ±0.1
    turn."""
    brightness, contrast = rng.uniform(*ranges.brightness_contrast, size=2)
    saturation = rng.uniform(*ranges.saturation)
    hue = rng.uniform(-ranges.hue, ranges.hue)
    out = ImageEnhance.Brightness(image).enhance(brightness)
    out = ImageEnhance.Contrast(out).enhance(contrast)
    out = ImageEnhance.Color(out).enhance(saturation)
    h, s, v = out.convert("HSV").split()
    shift = round(hue * 256) % 256
    h = h.point(lambda x: (x + shift) % 256)
    out = Image.merge("HSV", (h, s, v)).convert("RGB")
    return out, (f"brightness={brightness:.2f} contrast={contrast:.2f} "
                 f"saturation={saturation:.2f} hue={hue:+.2f}")


def grey(image: Image.Image, rng: np.random.Generator,
         ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Greyscale (kept as three equal channels)."""
    return ImageOps.grayscale(image).convert("RGB"), ""


def blur(image: Image.Image, rng: np.random.Generator,
         ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Gaussian blur, σ (Pillow's radius) ``blur_sigma`` of the shorter side (standard: 0.5-1.5
    %)."""
    radius = float(rng.uniform(*ranges.blur_sigma) * min(image.size))
    return image.filter(ImageFilter.GaussianBlur(radius)), f"radius={radius:.1f}px"


def scale(image: Image.Image, rng: np.random.Generator,
          ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Downscaling to ``scale_factor`` (20-50 %) of each side (bicubic), as a thumbnail or a
    re-share would."""
    factor = float(rng.uniform(*ranges.scale_factor))
    size = (max(1, round(image.size[0] * factor)), max(1, round(image.size[1] * factor)))
    return image.resize(size, Image.Resampling.BICUBIC), f"factor={factor:.2f}"


def flip(image: Image.Image, rng: np.random.Generator,
         ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Horizontal mirror image."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ""


def text(image: Image.Image, rng: np.random.Generator,
         ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """``text_lines`` (1-3) lines of caption text, ``text_size`` (6-14 %) of the height each, in a
    random colour with an outline; then, with ``caption_bar``, a caption bar (:func:`_caption_bar`).
    """
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width, height = image.size
    lines = int(rng.integers(ranges.text_lines[0], ranges.text_lines[1] + 1))
    size = max(8, round(height * rng.uniform(*ranges.text_size)))
    font = ImageFont.load_default(size=size)
    words = []
    for _ in range(lines):
        word = str(rng.choice(_WORDS))
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x = int(rng.uniform(0.0, 0.5) * width)
        y = int(rng.uniform(0.0, 0.85) * height)
        draw.text((x, y), word, fill=fill, font=font, stroke_width=max(1, size // 12),
                  stroke_fill=(0, 0, 0) if sum(fill) > 380 else (255, 255, 255))
        words.append(word)
    detail = f"size={size}px lines={'|'.join(words)}"
    if ranges.caption_bar is None:
        return out, detail
    out, bar = _caption_bar(out, rng, ranges.caption_bar)
    return out, f"{detail} {bar}"


def _caption_bar(image: Image.Image, rng: np.random.Generator,
                 heights: tuple[float, float]) -> tuple[Image.Image, str]:
    """A white or black band, ``heights`` of the image's height, at the top or the bottom, added
    to the canvas or laid over the picture, with 1-2 words centred in the other colour."""
    width, height = image.size
    band = max(8, round(height * rng.uniform(*heights)))
    top = bool(rng.integers(0, 2))
    added = bool(rng.integers(0, 2))
    white = bool(rng.integers(0, 2))
    words = " ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 3)),
                                                 replace=False))
    paper, ink = ((255, 255, 255), (0, 0, 0)) if white else ((0, 0, 0), (255, 255, 255))
    if added:
        out = ImageOps.expand(image, border=(0, band if top else 0, 0, 0 if top else band),
                              fill=paper)
    else:
        out = image.copy()
    y0 = 0 if top else out.size[1] - band
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, y0, width, y0 + band), fill=paper)
    font = ImageFont.load_default(size=max(6, round(band * 0.6)))
    left, upper, right, lower = draw.textbbox((0, 0), words, font=font)
    draw.text(((width - (right - left)) / 2 - left, y0 + (band - (lower - upper)) / 2 - upper),
              words, fill=ink, font=font)
    return out, (f"bar={band}px {'top' if top else 'bottom'} {'added' if added else 'over'} "
                 f"{'white' if white else 'black'} caption={words}")


def border(image: Image.Image, rng: np.random.Generator,
           ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """A solid frame of a random colour, ``border`` (standard: 5-20 %) of the size on each side
    (independently)."""
    width, height = image.size
    left, right = (round(width * f) for f in rng.uniform(*ranges.border, size=2))
    top, bottom = (round(height * f) for f in rng.uniform(*ranges.border, size=2))
    fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
    out = ImageOps.expand(image, border=(left, top, right, bottom), fill=fill)
    return out, f"pad={left},{top},{right},{bottom} fill={fill}"


#: The single edits, in the order reports list them.
SINGLE_EDITS: dict[str, Edit] = {
    "crop": crop, "rotate": rotate, "jpeg": jpeg, "colour": colour, "grey": grey, "blur": blur,
    "scale": scale, "flip": flip, "text": text, "border": border,
}


def chain(image: Image.Image, rng: np.random.Generator, ranges: Ranges = STANDARD,
          kinds: Sequence[str] | None = None) -> tuple[Image.Image, str]:
    """``chain_length`` (2-4) different single edits (of ``kinds``; default: all) in a random
    order, each with its own random parameters from ``ranges``."""
    names = list(kinds or SINGLE_EDITS)
    low, high = ranges.chain_length
    picked = rng.choice(len(names), size=int(rng.integers(low, high + 1)), replace=False)
    details = []
    for i in picked:
        image, detail = SINGLE_EDITS[names[i]](image, rng, ranges)
        details.append(f"{names[i]}({detail})" if detail else names[i])
    return image, " > ".join(details)


#: Every edit a copy-detection set applies: the single edits, then ``chain``.
EDITS: dict[str, Edit] = {**SINGLE_EDITS, "chain": chain}


def apply_edit(name: str, image: Image.Image, rng: np.random.Generator,
               ranges: Ranges = STANDARD) -> tuple[Image.Image, str]:
    """Apply edit ``name`` (one of :data:`EDITS`) to an RGB copy of ``image``, drawing its
    parameters from ``ranges`` (:data:`STANDARD` or :data:`HEAVY`)."""
    try:
        edit = EDITS[name]
    except KeyError:
        raise UnknownNameError("edit", name, list(EDITS), []) from None
    return edit(image.convert("RGB"), rng, ranges)
