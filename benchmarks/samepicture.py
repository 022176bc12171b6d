"""Which images show the same picture, decided from the pixels (no model), for evaluation sets.

Two images show the same picture when either

* their 32 x 32 grey thumbnails correlate at least 0.97, as they are or one mirrored, and their
  aspect ratios differ by 5 % at most: one file resized, recompressed, recoloured or mirrored; or
* ORB keypoints (scikit-image, 384-px grey images) of the two agree on one similarity transform
  (RANSAC, at least 20 inliers), as they are or one mirrored, and the grey images aligned by it
  correlate at least 0.6 where they overlap: the same photo cropped or resized as well.

Grey makes both checks blind to colour changes, the mirrored variant to flips. The thresholds
were set by looking at the pairs either side of them (GCompris, Tux Paint, OpenCV): distinct
photos of one monument or animal stay well below (at most 19 inliers, correlation at most 0.42;
the closest, two photos of toy blocks from one session, "ABC" and "123": 20 inliers, 0.57),
copies of one photo above (one Neptune photo in two packages: 20-62 inliers, 0.64-0.71).
Near the line are Euro coins sharing a design (10, 20 and 50 cents: 35-47 inliers, correlation
0.66-0.79), which end up grouped: a lenient grouping only ever counts a near-identical file as
right, never a right one as wrong.

Checking every pair geometrically is too slow, so it runs on candidates only: each image's
nearest neighbours by the cosine of vectors the caller gives (a model's embeddings: a model only
proposes pairs, it never decides one), the pairs whose thumbnails correlate at least 0.85, and
pairs the caller proposes. Pairs the caller asserts (name rules) need no check. Groups are the
connected components of the accepted pairs.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

THUMB_SIDE = 32
THUMB_SAME = 0.97  # thumbnail correlation of one file resized, recoloured or mirrored
THUMB_CANDIDATE = 0.85
ASPECT_TOLERANCE = 0.05
ORB_SIDE = 384
MIN_INLIERS = 20
MIN_ALIGNED = 0.6  # grey correlation after alignment, where the two overlap
NEIGHBOURS = 10
NEAR_MISS = 10  # inliers from which a rejected pair is still reported, to look at
#: What decides, for a set's recipe: a set is rebuilt when one of these changes.
RULES = {"thumbnail": THUMB_SAME, "aspect": ASPECT_TOLERANCE, "orb_side": ORB_SIDE,
         "inliers": MIN_INLIERS, "aligned": MIN_ALIGNED, "neighbours": NEIGHBOURS}


@dataclass(frozen=True)
class Match:
    """Images ``a`` and ``b`` show the same picture (``same``), found ``how`` ("name",
    "thumbnail", "orb"), or nearly do: ORB found ``inliers`` but not enough, or the aligned
    images correlate too little (``aligned``)."""

    a: int
    b: int
    how: str
    inliers: int = 0
    aligned: float = 0.0
    same: bool = True


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _thumb(image: Image.Image) -> np.ndarray:
    a = np.asarray(ImageOps.grayscale(image).resize((THUMB_SIDE, THUMB_SIDE),
                                                     Image.Resampling.BOX), np.float64).ravel()
    a -= a.mean()
    return a / (np.linalg.norm(a) + 1e-9)


def _grey(image: Image.Image) -> np.ndarray:
    """The image in grey, long side :data:`ORB_SIDE`, as uint8 (kept for many pairs)."""
    g = ImageOps.grayscale(image)
    s = ORB_SIDE / max(g.size)
    size = (max(16, round(g.size[0] * s)), max(16, round(g.size[1] * s)))
    return np.asarray(g.resize(size, Image.Resampling.BICUBIC))


@dataclass(frozen=True)
class _Features:
    """One orientation of an image: its grey pixels and ORB keypoints and descriptors."""

    grey: np.ndarray
    keypoints: np.ndarray
    descriptors: np.ndarray


def _orb(grey: np.ndarray) -> _Features:
    from skimage.feature import ORB

    orb = ORB(n_keypoints=600, fast_threshold=0.04)
    try:
        orb.detect_and_extract(grey / 255)
    except (RuntimeError, IndexError, ValueError):  # too few corners (a flat image)
        return _Features(grey, np.zeros((0, 2)), np.zeros((0, 256), bool))
    return _Features(grey, orb.keypoints, orb.descriptors)


def _aligned_match(a: _Features, b: _Features) -> tuple[int, float]:
    """(RANSAC inliers, aligned grey correlation) of ``b`` mapped onto ``a``."""
    from skimage.feature import match_descriptors
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform, warp

    if len(a.keypoints) < 8 or len(b.keypoints) < 8:
        return 0, 0.0
    pairs = match_descriptors(a.descriptors, b.descriptors, cross_check=True, max_ratio=0.85)
    if len(pairs) < 8:
        return 0, 0.0
    with warnings.catch_warnings():  # "no inliers found" is an answer here, not a problem
        warnings.simplefilter("ignore")
        model, inliers = ransac((a.keypoints[pairs[:, 0]][:, ::-1],
                                 b.keypoints[pairs[:, 1]][:, ::-1]),
                                SimilarityTransform, min_samples=3, residual_threshold=4,
                                max_trials=300, rng=0)
    if inliers is None or not model:
        return 0, 0.0
    if inliers.sum() < MIN_INLIERS:
        return int(inliers.sum()), 0.0
    ga = a.grey / 255
    warped = warp(b.grey / 255, model, output_shape=ga.shape, cval=-1)
    # Where both are white (cut-outs on a white page) says nothing about the picture.
    mask = (warped >= 0) & ~((ga > 0.95) & (warped > 0.95))
    if mask.sum() < 200:
        return int(inliers.sum()), 0.0
    x, y = ga[mask] - ga[mask].mean(), warped[mask] - warped[mask].mean()
    return int(inliers.sum()), float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


_PATHS: list[Path] = []
_FEATURES: dict[int, tuple[_Features, _Features]] = {}  # as it is, mirrored


def _check(pair: tuple[int, int]) -> Match | None:
    i, j = pair
    best = max(_aligned_match(_FEATURES[i][0], _FEATURES[j][m]) for m in (0, 1))
    if best[0] < NEAR_MISS:
        return None
    return Match(i, j, "orb", *best, same=best[0] >= MIN_INLIERS and best[1] >= MIN_ALIGNED)


def _features_of(index: int) -> tuple[int, tuple[_Features, _Features]]:
    image = open_rgb(_PATHS[index])
    return index, (_orb(_grey(image)), _orb(_grey(ImageOps.mirror(image))))


def same_picture(paths: Sequence[Path], vectors: np.ndarray, *,
                 asserted: Iterable[tuple[int, int]] = (),
                 proposed: Iterable[tuple[int, int]] = (),
                 processes: int | None = None) -> list[Match]:
    """The pairs of ``paths`` that show the same picture (see the module docstring), and the
    near misses (``same`` false); ``vectors`` (one L2-normalised row per path) only propose
    candidates."""
    global _PATHS, _FEATURES
    matches = [Match(min(i, j), max(i, j), "name") for i, j in asserted if i != j]
    images = [open_rgb(p) for p in paths]
    thumbs = np.stack([_thumb(im) for im in images])
    mirrored = np.stack([_thumb(ImageOps.mirror(im)) for im in images])
    aspect = np.log([im.size[0] / im.size[1] for im in images])
    correlation = np.maximum(thumbs @ thumbs.T, thumbs @ mirrored.T)
    np.fill_diagonal(correlation, -1)
    close_aspect = np.abs(aspect[:, None] - aspect[None, :]) <= np.log1p(ASPECT_TOLERANCE)
    same = np.argwhere(np.triu((correlation >= THUMB_SAME) & close_aspect, 1))
    matches += [Match(int(i), int(j), "thumbnail") for i, j in same]
    candidates = {(min(i, j), max(i, j)) for i, j in proposed if i != j}
    candidates |= {(int(i), int(j)) for i, j in np.argwhere(np.triu(correlation >= THUMB_CANDIDATE,
                                                                    1))}
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    for i, row in enumerate(np.argsort(-similarity, axis=1)[:, :NEIGHBOURS]):
        candidates |= {(min(i, int(j)), max(i, int(j))) for j in row}
    decided = {(m.a, m.b) for m in matches}
    todo = sorted(candidates - decided)
    _PATHS = list(paths)
    context = multiprocessing.get_context("fork")  # the workers inherit _PATHS and _FEATURES
    with context.Pool(processes or os.cpu_count() or 1) as pool:
        needed = sorted({k for pair in todo for k in pair})
        _FEATURES = dict(pool.imap_unordered(_features_of, needed, chunksize=8))
    with context.Pool(processes or os.cpu_count() or 1) as pool:
        matches += [m for m in pool.imap(_check, todo, chunksize=16) if m is not None]
    _PATHS, _FEATURES = [], {}
    return sorted(matches, key=lambda m: (m.a, m.b))


def components(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """A group id per item (the smallest member's index) from pairs of items in one group."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(n)]
