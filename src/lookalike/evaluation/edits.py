"""The edits a copy-detection query goes through: what people do to a photo before re-posting it.

Each edit takes an RGB PIL image and a numpy ``Generator`` and returns the edited RGB image and a
short description of the parameters it drew (for the manifest). Everything random comes from the
generator, so the same seed always gives the same pixels. Parameter ranges follow the issue:
crops keep 50-90 % of the area, rotations are 5-30 degrees either way, JPEG quality 10-40,
downscaling to 20-50 % per side, and a chain applies 2-4 different edits in a row.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from ..errors import UnknownNameError

Edit = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, str]]

_WORDS = ("holiday", "2026", "© lookalike", "best day ever", "#nofilter", "sale", "wow",
          "repost", "meme", "family", "shared via app", "do not copy")


def crop(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A random window keeping 50-90 % of the area, its aspect within 3:4..4:3 of the image's."""
    width, height = image.size
    area = rng.uniform(0.5, 0.9)
    stretch = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w_frac = min(1.0, math.sqrt(area * stretch))
    h_frac = min(1.0, area / w_frac)
    w, h = max(1, round(width * w_frac)), max(1, round(height * h_frac))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return image.crop((left, top, left + w, top + h)), f"area={w * h / (width * height):.2f}"


def rotate(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Rotation by 5-30 degrees either way; the canvas grows and the corners are filled black."""
    angle = float(rng.uniform(5, 30) * rng.choice([-1, 1]))
    rotated = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True,
                           fillcolor=(0, 0, 0))
    return rotated, f"angle={angle:.1f}"


def jpeg(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Re-encoding as JPEG at quality 10-40 (4:2:0 chroma), decoded again."""
    quality = int(rng.integers(10, 41))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB"), f"quality={quality}"


def colour(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Colour jitter: brightness and contrast 0.6-1.4, saturation 0.3-1.7, hue ±0.1 turn."""
    brightness, contrast = rng.uniform(0.6, 1.4, size=2)
    saturation = rng.uniform(0.3, 1.7)
    hue = rng.uniform(-0.1, 0.1)
    out = ImageEnhance.Brightness(image).enhance(brightness)
    out = ImageEnhance.Contrast(out).enhance(contrast)
    out = ImageEnhance.Color(out).enhance(saturation)
    h, s, v = out.convert("HSV").split()
    shift = round(hue * 256) % 256
    h = h.point(lambda x: (x + shift) % 256)
    out = Image.merge("HSV", (h, s, v)).convert("RGB")
    return out, (f"brightness={brightness:.2f} contrast={contrast:.2f} "
                 f"saturation={saturation:.2f} hue={hue:+.2f}")


def grey(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Greyscale (kept as three equal channels)."""
    return ImageOps.grayscale(image).convert("RGB"), ""


def blur(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Gaussian blur with a radius of 0.5-1.5 % of the shorter side (about 1-3.5 px at 224 px)."""
    radius = float(rng.uniform(0.005, 0.015) * min(image.size))
    return image.filter(ImageFilter.GaussianBlur(radius)), f"radius={radius:.1f}px"


def scale(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Downscaling to 20-50 % of each side (bicubic), as a thumbnail or a re-share would."""
    factor = float(rng.uniform(0.2, 0.5))
    size = (max(1, round(image.size[0] * factor)), max(1, round(image.size[1] * factor)))
    return image.resize(size, Image.Resampling.BICUBIC), f"factor={factor:.2f}"


def flip(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Horizontal mirror image."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ""


def text(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """1-3 lines of caption text, 6-14 % of the height each, in a random colour with an outline."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width, height = image.size
    lines = int(rng.integers(1, 4))
    size = max(8, round(height * rng.uniform(0.06, 0.14)))
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
    return out, f"size={size}px lines={'|'.join(words)}"


def border(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A solid frame of a random colour, 5-20 % of the size on each side (independently)."""
    width, height = image.size
    left, right = (round(width * f) for f in rng.uniform(0.05, 0.2, size=2))
    top, bottom = (round(height * f) for f in rng.uniform(0.05, 0.2, size=2))
    fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
    out = ImageOps.expand(image, border=(left, top, right, bottom), fill=fill)
    return out, f"pad={left},{top},{right},{bottom} fill={fill}"


#: The single edits, in the order reports list them.
SINGLE_EDITS: dict[str, Edit] = {
    "crop": crop, "rotate": rotate, "jpeg": jpeg, "colour": colour, "grey": grey, "blur": blur,
    "scale": scale, "flip": flip, "text": text, "border": border,
}


def chain(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """2-4 different single edits in a random order, each with its own random parameters."""
    names = list(SINGLE_EDITS)
    picked = rng.choice(len(names), size=int(rng.integers(2, 5)), replace=False)
    details = []
    for i in picked:
        image, detail = SINGLE_EDITS[names[i]](image, rng)
        details.append(f"{names[i]}({detail})" if detail else names[i])
    return image, " > ".join(details)


#: Every edit a copy-detection set applies: the single edits, then ``chain``.
EDITS: dict[str, Edit] = {**SINGLE_EDITS, "chain": chain}


def apply_edit(name: str, image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Apply edit ``name`` (one of :data:`EDITS`) to an RGB copy of ``image``."""
    try:
        edit = EDITS[name]
    except KeyError:
        raise UnknownNameError("edit", name, list(EDITS), []) from None
    return edit(image.convert("RGB"), rng)
