"""Is one image an edited copy of the other? Checked on their pixels, for pairs whose embeddings
are already close.

A global embedding cannot tell an edited copy from another shot of the same scene: on the
benchmark set (benchmarks/dupset.py), burst frames, coins of one design and overlapping crops of
one wallpaper score as high as re-encoded, resized or recoloured copies, so no cosine threshold
reaches 99 % precision with more than a fifth of the copies. A copy, though, is the other image's
pixels moved, scaled, mirrored or recoloured: laid over it at the right place and scale, it
correlates with it. Two shots of one scene do not, least of all in their fine detail.

Both images are reduced to grey thumbnails (:data:`SIDE` px on the long side, slightly blurred,
which also hides JPEG blocks), then each, scaled by 1 down to :data:`SMALLEST` (a crop, or a
border added to the other), mirrored or not, is slid over the other to find where it correlates
best (normalised cross-correlation, by FFT). Two scores come out: ``aligned``, the best
correlation of the thumbnails, and ``detail``, the same for their band-pass versions (the
thumbnail less a blurred copy: edges and texture), which a same-shaped object of another design
or another moment of a scene does not share. A pair is a near copy when both pass the model's
calibrated thresholds (:mod:`.thresholds`); the detail score is only computed when ``aligned``
passes, as it rarely does for pairs that are not copies.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat

import numpy as np
from PIL import Image, ImageFilter

from ..collection.files import read_indexed
from ..errors import LookalikeError
from ..imaging import open_image
from ..storage import ImageRecord

SIDE = 128
SMALLEST = 0.5  # the smallest relative scale tried: a crop keeping a quarter of the area
SCALES = np.geomspace(1.0, SMALLEST, 10)  # about 7 % apart
BLUR, DETAIL_BLUR = 1.0, 3.0  # σ in thumbnail pixels
MIN_SIDE = 12  # scaled thumbnails smaller than this are not tried
FLAT = 0.25  # a window with a quarter of the template's variance or less cannot match it
PAIRS_PER_WORKER = 200  # about 5 s of checks: fewer do not pay for starting a process
CHUNK = 250  # pairs a worker checks at a time
THUMBS_KEPT = 500  # thumbnails a process keeps (about 0.4 MB each)


@dataclass(frozen=True)
class Thumb:
    """An image as the check compares it: its grey thumbnail and band-pass thumbnail, each with
    what sliding a template over it needs (FFT, running sums)."""

    plain: _Plane
    detail: _Plane


class _Plane:
    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        self.image = Image.fromarray(pixels, mode="F")
        self.mirrored = self.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        self.fft = np.fft.rfft2(pixels)
        padded = np.pad(pixels, ((1, 0), (1, 0))).astype(np.float64)
        self.sums = padded.cumsum(0).cumsum(1)
        self.squares = (padded * padded).cumsum(0).cumsum(1)


def thumb(data: bytes, max_pixels: int) -> Thumb | None:
    """The thumbnails of an image file's bytes; None if they cannot be decoded."""
    try:
        image = open_image(data, max_pixels=max_pixels, draft_to=2 * SIDE)
    except LookalikeError:
        return None
    grey = image.convert("L")
    grey.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR)
    smooth = grey.filter(ImageFilter.GaussianBlur(BLUR))
    plain = np.asarray(smooth, np.float32)
    detail = plain - np.asarray(smooth.filter(ImageFilter.GaussianBlur(DETAIL_BLUR)), np.float32)
    return Thumb(_Plane(plain), _Plane(detail))


def scores(a: Thumb, b: Thumb, aligned_floor: float | None = None) -> tuple[float, float]:
    """(aligned, detail) of a pair (module docstring); ``detail`` is -1 when ``aligned`` is below
    ``aligned_floor`` (it is not computed then)."""
    aligned = _best(a.plain, b.plain)
    if aligned_floor is not None and aligned < aligned_floor:
        return aligned, -1.0
    return aligned, _best(a.detail, b.detail)


def _best(a: _Plane, b: _Plane) -> float:
    """The best correlation of either image, scaled and mirrored, slid over the other."""
    return max(_slide(a, b.image), _slide(b, a.image), _slide(a, b.mirrored),
               _slide(b, a.mirrored))


def _slide(big: _Plane, small: Image.Image) -> float:
    height, width = big.pixels.shape
    best = -1.0
    for scale in SCALES:
        w, h = round(small.width * scale), round(small.height * scale)
        if min(w, h) < MIN_SIDE or h > height or w > width:
            continue
        # float32 throughout the FFTs (twice as fast as float64; the scores move by < 1e-4).
        template = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), np.float32)
        template = template - template.mean()
        energy = float(np.dot(template.ravel(), template.ravel()))
        if energy <= 0:
            continue
        # Correlation at every placement inside ``big``: convolution with the flipped template.
        product = big.fft * np.fft.rfft2(template[::-1, ::-1], (height, width))
        correlation = np.fft.irfft2(product, (height, width))[h - 1:, w - 1:]
        s, q = big.sums, big.squares
        window = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
        window_sq = q[h:, w:] - q[:-h, w:] - q[h:, :-w] + q[:-h, :-w]
        variance = window_sq - window * window / (h * w)
        usable = variance > FLAT * energy
        if usable.any():
            ncc = correlation[usable] / np.sqrt(variance[usable] * energy)
            best = max(best, float(ncc.max()))
    return min(best, 1.0)


def verify_pairs(pairs: Sequence[tuple[int, int]], records: dict[int, ImageRecord], *,
                 max_pixels: int, max_bytes: int, aligned_floor: float | None = None,
                 workers: int | None = None, progress: Callable[[int, int], None] | None = None
                 ) -> dict[tuple[int, int], tuple[float, float] | None]:
    """:func:`scores` of each pair of indexed images, read as they were indexed; None for a
    pair one of whose files cannot be read unchanged. Many pairs are shared out, in runs of
    :data:`CHUNK`, among ``workers`` processes (default: one per CPU), each keeping the
    thumbnails it made last; ``progress(done, total)`` follows them."""
    pairs = sorted(pairs)  # runs of sorted pairs share their first image: one thumbnail
    workers = min(workers or os.cpu_count() or 1, max(1, len(pairs) // PAIRS_PER_WORKER))
    chunks = [pairs[start:start + CHUNK] for start in range(0, len(pairs), CHUNK)]
    found: dict[tuple[int, int], tuple[float, float] | None] = {}
    if workers <= 1:
        try:
            for chunk in chunks:
                found.update(_verify_chunk(chunk, records, max_pixels, max_bytes, aligned_floor))
                if progress:
                    progress(len(found), len(pairs))
        finally:
            _thumbs.clear()  # this process may live on (a server): keep no thumbnails
        return found
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = pool.map(_verify_chunk, chunks,
                        [{i: records[i] for pair in chunk for i in pair} for chunk in chunks],
                        repeat(max_pixels), repeat(max_bytes), repeat(aligned_floor))
        for result in jobs:
            found.update(result)
            if progress:
                progress(len(found), len(pairs))
    return found


_thumbs: OrderedDict[int, Thumb | None] = OrderedDict()  # a process's latest thumbnails


def _verify_chunk(pairs: Sequence[tuple[int, int]], records: dict[int, ImageRecord],
                  max_pixels: int, max_bytes: int, aligned_floor: float | None
                  ) -> dict[tuple[int, int], tuple[float, float] | None]:
    def thumb_of(image_id: int) -> Thumb | None:
        if image_id in _thumbs:
            _thumbs.move_to_end(image_id)  # ids are never reused: a kept one is still right
            return _thumbs[image_id]
        try:
            made = thumb(read_indexed(records[image_id], max_bytes), max_pixels)
        except LookalikeError:
            made = None
        _thumbs[image_id] = made
        if len(_thumbs) > THUMBS_KEPT:
            _thumbs.popitem(last=False)
        return made

    found: dict[tuple[int, int], tuple[float, float] | None] = {}
    for a, b in pairs:
        first, second = thumb_of(a), thumb_of(b)
        found[(a, b)] = (None if first is None or second is None
                         else scores(first, second, aligned_floor))
    return found
