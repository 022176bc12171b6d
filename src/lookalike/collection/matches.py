"""What each hit is to its query, and results kept diverse.

A hit's ``match`` label comes from the model's calibrated thresholds (``thresholds.json``, the
ones ``lookalike dedup`` groups by, measured on self-made edits of real photos), read on the
cosine of the two images' embeddings as the model made them (never through a collection's
learned projection, which the calibration did not see):

- ``exact``: the same bytes as the query (its content hash).
- ``copy``: an edited copy (re-encoded, resized, cropped, recoloured...): at least the
  ``normal`` near-duplicate cosine for a cosine alone.
- ``similar``: the same scene or a look-alike: at least the ``similar`` cosine.
- none: anything further. A model without calibration labels ``exact`` only.

Collapsing folds a hit that is a copy (or the same bytes) of a better-ranked hit into it, the
same rule between two hits; ``max_per`` keeps at most N hits per value of a field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..storage import ImageRecord
from ..thresholds import Thresholds, calibrated_models, thresholds_for

MATCHES = ("exact", "copy", "similar")


@dataclass
class Ranked:
    """A hit while results are assembled: id, the index's score, row, and folded copies."""

    image_id: int
    score: float
    record: ImageRecord
    copies: list[Ranked] = field(default_factory=list)


class Matcher:
    """Labels hits and tells copies apart, by one model's calibrated thresholds."""

    def __init__(self, model: str) -> None:
        self.thresholds: Thresholds | None = (
            thresholds_for(model, verify=False) if model in calibrated_models() else None)

    def label(self, cosine: float, same_bytes: bool) -> str | None:
        """``exact``, ``copy``, ``similar`` or None for a hit at this model cosine."""
        if same_bytes:
            return "exact"
        if self.thresholds is None:
            return None
        if cosine >= self.thresholds.near.threshold:
            return "copy"
        return "similar" if cosine >= self.thresholds.similar.threshold else None

    def diversify(self, ranked: Sequence[Ranked], k: int, vectors: Mapping[int, np.ndarray],
                  *, collapse: bool, max_per: tuple[str, int] | None,
                  fields: Mapping[int, Mapping[str, Sequence[str | float]]]) -> list[Ranked]:
        """Up to ``k`` hits in rank order: with ``collapse``, a copy of a hit kept above it is
        folded into that hit's ``copies``; with ``max_per`` (key, n), a hit whose value of
        that key already has n hits kept is left out (hits without the key are not limited)."""
        kept: list[Ranked] = []
        at: list[int] = []  # the rank of each kept hit
        per: dict[tuple[str | float, ...], int] = {}
        near = self.thresholds.near.threshold if self.thresholds is not None else 2.0
        # Every pair's cosine at once (missing vectors as zeros): one product, not one per pair.
        sims = _cosines(ranked, vectors) if collapse else None
        for i, hit in enumerate(ranked):
            if sims is not None and kept:
                original = _first_copy(hit, kept, sims[i, at], near)
                if original is not None:
                    original.copies.append(hit)
                    continue
            if len(kept) == k:
                if not collapse:
                    break
                continue  # full: later hits may still be copies of a kept one
            if max_per is not None:
                values = tuple(fields.get(hit.image_id, {}).get(max_per[0], ()))
                if values and per.get(values, 0) >= max_per[1]:
                    continue
                if values:
                    per[values] = per.get(values, 0) + 1
            kept.append(hit)
            at.append(i)
        return kept


def _cosines(ranked: Sequence[Ranked], vectors: Mapping[int, np.ndarray]) -> np.ndarray:
    dim = next((len(v) for v in vectors.values()), 0)
    zero = np.zeros(dim, np.float32)
    stacked = np.stack([vectors.get(h.image_id, zero) for h in ranked]) if ranked else \
        np.zeros((0, dim), np.float32)
    return stacked @ stacked.T


def _first_copy(hit: Ranked, kept: Sequence[Ranked], sims: np.ndarray,
                near: float) -> Ranked | None:
    """The best-ranked kept hit that ``hit`` is a copy of: the same bytes, or ``near``."""
    for other, cosine in zip(kept, sims, strict=True):
        digest = hit.record.content_hash
        if (digest and digest == other.record.content_hash) or cosine >= near:
            return other
    return None
