"""One image against a collection: the duplicates of a newly added image, and screening images
against a watchlist (moderation). Candidates come from the collection's index; each is re-scored
with the stored vectors and put in a tier by the model's calibrated thresholds."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..collection import Collection
from ..collection.files import read_indexed
from ..collection.images import DecodeLimits
from ..errors import ImageNotFoundError, LookalikeError, UsageError
from ..imaging import content_hash, read_bytes
from ..ingest.local import walk
from ..storage import ImageRecord
from ..thresholds import SAME_PIXELS_COSINE, TIERS, Thresholds
from ..types import shown_uri
from .groups import Member
from .pairs import PixelHashes, pixel_digest
from .verify import Thumb, scores, thumb, verify_pairs

CANDIDATES = 20  # index hits re-scored per image: more than any real image has copies


def duplicates_of(collection: Collection, image_id: int, thresholds: Thresholds, *,
                  tier: str = "near") -> list[Member]:
    """The indexed images that are duplicates of image ``image_id``, of ``tier`` or closer,
    closest first, less those a person decided are distinct from it."""
    record = collection.store.get([image_id]).get(image_id)
    vector = collection.store.vector(image_id)
    if record is None or record.status != "active" or vector is None:
        raise ImageNotFoundError(f"No indexed image has id {image_id}.")
    distinct = {frozenset((d.first, d.second)) for d in collection.store.decisions()
                if d.verdict == "distinct"}
    limits = collection.limits
    pixels = PixelHashes({image_id: record}, limits.max_pixels, limits.max_file_bytes)

    def checked(candidates: dict[int, ImageRecord]) -> dict[int, tuple[float, float] | None]:
        found = verify_pairs([(image_id, c) for c in candidates],
                             {image_id: record, **candidates}, max_pixels=limits.max_pixels,
                             max_bytes=limits.max_file_bytes, aligned_floor=thresholds.near.aligned,
                             workers=1)
        return {c: found[(image_id, c)] for c in candidates}

    matches = _matches(collection, vector, record.content_hash, lambda: pixels.digest(image_id),
                       checked, thresholds, tier, exclude={image_id})
    return [m for m, digest in matches if frozenset((record.content_hash, digest)) not in distinct]


Checks = Callable[[dict[int, ImageRecord]], dict[int, tuple[float, float] | None]]


def _matches(collection: Collection, vector: np.ndarray, digest: str | None,
             pixel_digest: Callable[[], str | None], checked: Checks, thresholds: Thresholds,
             tier: str, exclude: set[int] | None = None) -> list[tuple[Member, str | None]]:
    """The collection's images within ``tier`` of ``vector`` (whose bytes hash to ``digest``
    and whose pixels to ``pixel_digest()``; ``checked`` runs the pixel check of near copies
    against candidates), closest first, with their content hashes."""
    hits = collection.search_vector(vector, CANDIDATES, qe=0, exclude=exclude)
    stored = collection.store.vectors([h.image_id for h in hits])
    records = {i: r for i, r in collection.store.get(list(stored)).items()
               if r.status == "active"}
    cosines = {i: float(np.dot(stored[i], vector)) for i in records}
    pixels = PixelHashes(records, collection.limits.max_pixels, collection.limits.max_file_bytes)
    found = []
    hows = {}
    for image_id, record in records.items():
        cosine = cosines[image_id]
        hows[image_id] = ("same bytes" if digest is not None and record.content_hash == digest
                          else "same pixels" if cosine >= SAME_PIXELS_COSINE
                          and (mine := pixel_digest()) is not None
                          and pixels.digest(image_id) == mine else "")
    to_check = {i: r for i, r in records.items()
                if not hows[i] and cosines[i] >= thresholds.near.threshold}
    checks = checked(to_check) if to_check and tier != "exact" and thresholds.near.verified \
        else {}
    for image_id, record in records.items():
        cosine, how, check = cosines[image_id], hows[image_id], checks.get(image_id)
        level = "exact" if how else thresholds.tier_of(cosine, check)
        if level is not None and TIERS.index(level) <= TIERS.index(tier):
            found.append((Member(record.id, record.uri, record.width, record.height,
                                 record.size, level, 1.0 if how == "same bytes" else cosine,
                                 how, check), record.content_hash))
    return sorted(found, key=lambda m: (TIERS.index(m[0].tier or "exact"), -m[0].cosine))


@dataclass(frozen=True)
class Screened:
    """An image screened against a watchlist: its best match of the tier asked, if any, or why
    it could not be read."""

    source: str
    match: Member | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": shown_uri(self.source),
                "match": self.match.to_dict() if self.match else None, "error": self.error}


def screen(watchlist: Collection, sources: Sequence[str | os.PathLike[str] | bytes],
           thresholds: Thresholds, *, tier: str = "near") -> list[Screened]:
    """Each image (a path, or file bytes) against ``watchlist``: its closest watchlist image
    of ``tier`` or closer. Folders are screened image by image. An unreadable image is reported
    with its reason and never stops the rest."""
    if tier not in TIERS:
        raise UsageError(f"Unknown tier {tier!r}: use one of {', '.join(TIERS)}.")
    results = []
    limits = watchlist.limits
    for source in _expanded(sources):
        name = "<upload>" if isinstance(source, bytes) else os.fspath(source)
        try:
            data = (source if isinstance(source, bytes)
                    else read_bytes(name, watchlist.limits.max_file_bytes))
            vector = watchlist.embed([data])[0]
        except (LookalikeError, OSError) as exc:
            results.append(Screened(name, None, str(exc)))
            continue
        pixels = functools.cache(functools.partial(pixel_digest, data, limits.max_pixels))
        checked = functools.partial(_check_bytes, thumb(data, limits.max_pixels), limits,
                                    thresholds.near.aligned)
        best = _matches(watchlist, vector, content_hash(data), pixels, checked, thresholds, tier)
        results.append(Screened(name, best[0][0] if best else None))
    return results


def _check_bytes(mine: Thumb | None, limits: DecodeLimits, aligned_floor: float | None,
                 candidates: dict[int, ImageRecord]) -> dict[int, tuple[float, float] | None]:
    """The pixel check of an image (its thumbnail ``mine``) against indexed ``candidates``."""
    found: dict[int, tuple[float, float] | None] = {}
    for image_id, record in candidates.items():
        try:
            theirs = thumb(read_indexed(record, limits.max_file_bytes), limits.max_pixels)
        except LookalikeError:
            theirs = None
        found[image_id] = (None if mine is None or theirs is None
                           else scores(mine, theirs, aligned_floor))
    return found


def _expanded(sources: Sequence[str | os.PathLike[str] | bytes]
              ) -> list[str | os.PathLike[str] | bytes]:
    out: list[str | os.PathLike[str] | bytes] = []
    for source in sources:
        if isinstance(source, bytes) or not os.path.isdir(source):
            out.append(source)
        else:
            out.extend(entry.uri for entry in walk([source])[0])
    return out
