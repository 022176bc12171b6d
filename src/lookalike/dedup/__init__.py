"""Duplicates across a whole collection, checking new images on arrival, and screening images
against a watchlist collection.

>>> report = find_duplicates(collection, tier="near", preset="normal")
>>> for group in report.groups:
...     print(group.keep.uri, group.reason, [m.uri for m in group.members])

Tiers: ``exact`` (the same bytes, or the same pixels with other metadata), ``near`` (edited
copies: re-encoded, resized, cropped, recoloured...) and ``similar`` (the same scene or burst:
reported, never acted on). The thresholds are calibrated per model (:mod:`.thresholds`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..collection import Collection
from ..errors import ImageNotFoundError, UsageError
from ..storage import VERDICTS, Decision
from ..thresholds import PRESETS, TIERS, Thresholds, thresholds_for
from .groups import DuplicateGroup, Member, make_groups
from .pairs import find_pairs, stderr_progress

__all__ = ["PRESETS", "TIERS", "DuplicateGroup", "DuplicateReport", "Member", "Thresholds",
           "decide", "find_duplicates", "thresholds_for"]

DEFAULT_MAX_GROUP = 50


@dataclass(frozen=True)
class DuplicateReport:
    """Groups of duplicates, best first, and what the scan compared."""

    groups: list[DuplicateGroup]
    tier: str
    thresholds: Thresholds
    images: int  # active images compared
    pairs: int  # pairs of ``tier`` or closer, after decisions
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        t = self.thresholds
        return {"tier": self.tier, "preset": t.preset, "near_threshold": t.near.threshold,
                "verified": t.near.verified, "aligned_threshold": t.near.aligned,
                "detail_threshold": t.near.detail,
                "similar_threshold": t.similar.threshold, "images": self.images,
                "pairs": self.pairs, "seconds": round(self.seconds, 3),
                "groups": [g.to_dict() for g in self.groups]}


def find_duplicates(collection: Collection, *, tier: str = "near", preset: str | None = None,
                    threshold: float | None = None, verify: bool = True,
                    max_group: int = DEFAULT_MAX_GROUP, prefer: Sequence[str] = (),
                    workers: int | None = None, show_progress: bool | None = None
                    ) -> DuplicateReport:
    """The collection's groups of duplicates of ``tier`` or closer, by the model's calibrated
    ``preset`` (default ``normal``) or a near-copy cosine ``threshold``; at most ``max_group``
    images a group; copies in the ``prefer`` folders are kept first. Near copies are confirmed
    on their pixels (:mod:`.verify`, in ``workers`` processes) unless ``verify`` is false.
    Pairs a person decided are not duplicates (:func:`decide`) are never grouped."""
    if max_group < 2:
        raise UsageError(f"A group holds at least 2 images, got --max-group {max_group}.")
    started = time.perf_counter()
    thresholds = thresholds_for(collection.model_name, preset=preset, threshold=threshold,
                                verify=verify)
    progress = stderr_progress(show_progress, collection.store.counts()["active"])
    found = find_pairs(collection, thresholds, tier, max_per_image=max(64, max_group),
                       workers=workers, progress=progress)
    groups = make_groups(found.pairs, found.records, found.decisions, max_size=max_group,
                         prefer=prefer)
    return DuplicateReport(groups, tier, thresholds, found.images, len(found.pairs),
                           time.perf_counter() - started)


def decide(collection: Collection, images: Sequence[int], verdict: str | None, *,
           keep: int | None = None) -> int:
    """Record a person's verdict on every pair among ``images`` (ids): ``distinct`` (not
    duplicates: never grouped again), ``duplicate`` (with ``keep``: that copy is kept first
    from now on), or None to forget earlier verdicts. Kept by content hash, so it survives
    re-indexing, renames and moves. Returns the number of pairs."""
    if verdict is not None and verdict not in VERDICTS:
        raise UsageError(f"Unknown verdict {verdict!r}: use one of {', '.join(VERDICTS)}, or "
                         "null to forget a decision.")
    if len(set(images)) < 2:
        raise UsageError("A decision is about two or more different images.")
    if keep is not None and (verdict != "duplicate" or keep not in images):
        raise UsageError("keep names one of the images of a 'duplicate' verdict.")
    records = collection.store.get(list(images))
    missing = [i for i in images if i not in records or records[i].status != "active"]
    if missing:
        raise ImageNotFoundError(f"No indexed image has id {missing[0]}.")
    hashes = {i: records[i].content_hash for i in images}
    if any(h is None for h in hashes.values()):
        raise UsageError("An image without a content hash cannot carry a decision.")
    keep_hash = hashes[keep] if keep is not None else None
    pairs = {tuple(sorted((str(hashes[a]), str(hashes[b]))))
             for n, a in enumerate(images) for b in images[n + 1:] if hashes[a] != hashes[b]}
    if verdict is None:
        collection.store.decide(forget=pairs)  # type: ignore[arg-type]
    else:
        collection.store.decide(Decision(a, b, verdict, keep_hash if keep_hash in (a, b)
                                         else None) for a, b in pairs)
    return len(pairs)

