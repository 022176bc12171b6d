"""The pairs of look-alike images in a collection, each with its tier: a self-join over the
stored vectors (:func:`lookalike.index.selfjoin.similar_pairs`), re-scored exactly, plus the
images that share their bytes, less the pairs a person said are not duplicates.

``exact`` pairs have the same bytes (the same content hash) or the same decoded pixels (only
metadata differs: decided by decoding both files, only for pairs whose cosine is already at
least :data:`.thresholds.SAME_PIXELS_COSINE`); ``near`` and ``similar`` pairs pass those
thresholds. Every score is the cosine of the stored vectors, as the model made them.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..collection import Collection
from ..collection.files import read_indexed
from ..errors import LookalikeError, UsageError
from ..imaging import open_image
from ..index.selfjoin import similar_pairs
from ..storage import Decision, ImageRecord
from ..thresholds import SAME_PIXELS_COSINE, TIERS, Thresholds
from .verify import verify_pairs

MARGIN = 0.002  # the join reads float16 vectors: look this far below the floor, then re-score
_CHUNK = 8192
BYTES_CLIQUE = 100


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    score: float
    tier: str  # "exact", "near" or "similar"
    how: str = ""  # exact: "same bytes" or "same pixels"; near: "confirmed by you", if so
    check: tuple[float, float] | None = None  # (aligned, detail) when the pixels were checked


@dataclass(frozen=True)
class Found:
    """What a scan found: the pairs of ``tier`` or closer, the stored records of their images,
    and how many active images were compared."""

    pairs: list[Pair]
    records: dict[int, ImageRecord]
    decisions: list[Decision]
    images: int


def find_pairs(collection: Collection, thresholds: Thresholds, tier: str, *,
               max_per_image: int = 64, workers: int | None = None,
               progress: Callable[[str, int, int], None] | None = None) -> Found:
    """Every pair of active images of ``tier`` or closer (exact < near < similar), as a person
    decided them (:func:`decided`). ``workers``: processes that check pixels (default: one
    per CPU)."""
    if tier not in TIERS:
        raise UsageError(f"Unknown tier {tier!r}: use one of {', '.join(TIERS)}.")
    store = collection.store
    ids, vectors = _stored(collection, progress)
    floor = thresholds.floor(tier)
    joined = similar_pairs(vectors, floor - MARGIN, max_per_row=max_per_image,
                           progress=(lambda done, total: progress("comparing", done, total))
                           if progress else None)
    del vectors
    a, b = ids[joined.left], ids[joined.right]
    scores = _rescored(store.vectors, a, b)
    keep = scores >= floor
    a, b, scores = a[keep], b[keep], scores[keep]
    byte_groups = store.same_bytes()
    involved = set(a.tolist()) | set(b.tolist()) | {i for g in byte_groups for i in g}
    records = _records(store.get, involved)
    made = store.decisions()
    verdicts = {(d.first, d.second): d.verdict for d in made}
    # Pairs decided distinct go before their pixels are checked: they would be dropped after.
    kept = np.array([verdicts.get(_hashes(records, x, y)) != "distinct"  # type: ignore[arg-type]
                     for x, y in zip(a.tolist(), b.tolist(), strict=True)], np.bool_)
    if len(kept):
        a, b, scores = a[kept], b[kept], scores[kept]
    pairs = _tiered(a, b, scores, byte_groups, records, thresholds, tier,
                    collection.limits.max_pixels, collection.limits.max_file_bytes, workers,
                    (lambda done, total: progress("checking pixels", done, total))
                    if progress else None)
    pairs = [p for p in decided(pairs, records, verdicts)
             if TIERS.index(p.tier) <= TIERS.index(tier)]
    return Found(pairs, records, made, len(ids))


def decided(pairs: Iterable[Pair], records: dict[int, ImageRecord],
            verdicts: dict[tuple[str, str], str]) -> list[Pair]:
    """``pairs`` as a person decided them (``verdicts`` by pair of content hashes): without
    those they said are distinct, and with those they confirmed as duplicates near copies at
    least."""
    out = []
    for pair in pairs:
        verdict = verdicts.get(_hashes(records, pair.a, pair.b))  # type: ignore[arg-type]
        if verdict == "distinct":
            continue
        if verdict == "duplicate" and pair.tier == "similar":
            pair = replace(pair, tier="near", how="confirmed by you")
        out.append(pair)
    return out


def _hashes(records: dict[int, ImageRecord], a: int, b: int) -> tuple[str, str] | None:
    ha, hb = records[a].content_hash, records[b].content_hash
    if ha is None or hb is None:
        return None
    return (ha, hb) if ha <= hb else (hb, ha)


def _stored(collection: Collection,
            progress: Callable[[str, int, int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Every active image's id and stored vector (float16: half the memory; the pairs are
    re-scored from the float32 vectors), as of one generation."""
    store = collection.store
    generation = store.generation()
    total = store.counts()["active"]  # at least what the snapshot holds, nearly always
    all_ids = np.empty(total, np.int64)
    matrix = np.empty((total, collection.dim), np.float16)
    done = 0
    for ids, vectors in store.iter_vectors(upto_generation=generation):
        if done + len(ids) > len(all_ids):  # images added between the count and the snapshot
            grow = max(len(ids), len(all_ids) // 8)
            all_ids = np.concatenate([all_ids, np.empty(grow, np.int64)])
            matrix = np.concatenate([matrix, np.empty((grow, collection.dim), np.float16)])
        all_ids[done:done + len(ids)] = ids
        matrix[done:done + len(ids)] = vectors
        done += len(ids)
        if progress:
            progress("reading", done, max(done, total))
    return all_ids[:done], matrix[:done]


def _rescored(vectors_of: Callable[[Sequence[int]], dict[int, np.ndarray]], a: np.ndarray,
              b: np.ndarray) -> np.ndarray:
    """The exact cosine of each pair (a[i], b[i]), from the stored float32 vectors."""
    scores = np.empty(len(a), np.float32)
    for start in range(0, len(a), _CHUNK):
        left, right = a[start:start + _CHUNK], b[start:start + _CHUNK]
        found = vectors_of(sorted(set(left.tolist()) | set(right.tolist())))
        scores[start:start + _CHUNK] = np.einsum(
            "ij,ij->i", np.stack([found[i] for i in left.tolist()]),
            np.stack([found[i] for i in right.tolist()]))
    return scores


def _records(get: Callable[[Sequence[int]], dict[int, ImageRecord]],
             ids: Iterable[int]) -> dict[int, ImageRecord]:
    wanted, records = sorted(ids), {}
    for start in range(0, len(wanted), _CHUNK):
        records.update(get(wanted[start:start + _CHUNK]))
    return records


def _tiered(a: np.ndarray, b: np.ndarray, scores: np.ndarray, byte_groups: list[list[int]],
            records: dict[int, ImageRecord], thresholds: Thresholds, tier: str, max_pixels: int,
            max_bytes: int, workers: int | None,
            progress: Callable[[int, int], None] | None) -> list[Pair]:
    pairs: dict[tuple[int, int], Pair] = {}
    for group in byte_groups:
        # Every pair of a run of identical files, in cliques of BYTES_CLIQUE: a file copied
        # 10,000 times would otherwise make 50 million pairs (groups are capped anyway).
        for start in range(0, len(group), BYTES_CLIQUE):
            clique = group[start:start + BYTES_CLIQUE]
            for i, x in enumerate(clique):
                for y in clique[i + 1:]:
                    pairs[(x, y)] = Pair(x, y, 1.0, "exact", "same bytes")
    pixels = PixelHashes(records, max_pixels, max_bytes)
    rest = []
    for x, y, score in zip(a.tolist(), b.tolist(), scores.tolist(), strict=True):
        key = (min(x, y), max(x, y))
        if key in pairs:
            continue
        if score >= SAME_PIXELS_COSINE and pixels.same(x, y):
            pairs[key] = Pair(*key, score, "exact", "same pixels")
        else:
            rest.append((key, score))
    checks: dict[tuple[int, int], tuple[float, float] | None] = {}
    if tier != "exact" and thresholds.near.verified:
        checks = verify_pairs([key for key, score in rest if score >= thresholds.near.threshold],
                              records, max_pixels=max_pixels, max_bytes=max_bytes,
                              aligned_floor=thresholds.near.aligned, workers=workers,
                              progress=progress)
    for key, score in rest:
        check = checks.get(key)
        if (level := thresholds.tier_of(score, check)) is not None:
            pairs[key] = Pair(*key, score, level, check=check)
    return sorted(pairs.values(), key=lambda p: (p.a, p.b))


class PixelHashes:
    """A digest of each image's decoded pixels (EXIF orientation applied), computed once per
    image and only when asked; None when its file cannot be read as it was indexed."""

    def __init__(self, records: dict[int, ImageRecord], max_pixels: int, max_bytes: int) -> None:
        # "records" may grow after this is made: the caller's dict is shared, not copied.
        self._records, self._max_pixels, self._max_bytes = records, max_pixels, max_bytes
        self._digests: dict[int, str | None] = {}

    def same(self, a: int, b: int) -> bool:
        first = self.digest(a)
        return first is not None and first == self.digest(b)

    def digest(self, image_id: int) -> str | None:
        if image_id not in self._digests:
            self._digests[image_id] = self._compute(self._records[image_id])
        return self._digests[image_id]

    def _compute(self, record: ImageRecord) -> str | None:
        try:
            data = read_indexed(record, self._max_bytes)
        except LookalikeError:
            return None
        return pixel_digest(data, self._max_pixels)


def pixel_digest(data: bytes, max_pixels: int) -> str | None:
    """A digest of the decoded pixels of an image file (EXIF orientation applied): the same for
    files that differ only in metadata or lossless encoding. None if it cannot be decoded."""
    try:
        image = open_image(data, max_pixels=max_pixels)
    except LookalikeError:
        return None
    digest = hashlib.blake2b(f"{image.size}".encode(), digest_size=16)
    digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()


def stderr_progress(show: bool | None, images: int) -> Callable[[str, int, int], None] | None:
    """A progress bar on stderr for scans of large collections (or as ``show`` says)."""
    if show is False or (show is None and (images < 20_000 or not sys.stderr.isatty())):
        return None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            unit = {"reading": "img", "checking pixels": "pair"}.get(stage, "")
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=unit, leave=False)
        bar.total = total
        bar.update(done - bar.n)

    return update
