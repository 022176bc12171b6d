"""Which cosine makes two images duplicates, per model: the presets calibrated on self-made
edits of real photos (``thresholds.json``, written by ``benchmarks/calibrate_dedup.py``).

A score is the cosine of the two images' stored embeddings as the model made them, never
through a collection's learned projection, so one threshold holds for every collection of a
model. ``exact`` needs no threshold: the same bytes, or the same decoded pixels. A ``near`` pair
passes the preset's cosine and, by default, the pixel check of :mod:`.verify` (its ``aligned`` and
``detail`` thresholds); ``near_cosine`` holds the presets for a cosine alone (``--no-verify``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

PRESETS = ("strict", "normal", "loose")
TIERS = ("exact", "near", "similar")
DEFAULT_PRESET = "normal"
#: Two files with the same pixels embed alike, not always identically: a JPEG is decoded at a
#: reduced size (in the DCT) where a PNG of its pixels is resized after decoding; measured, such
#: pairs score 0.994 at least. Above this cosine a pair is decoded to compare its pixels.
SAME_PIXELS_COSINE = 0.99
_FILE = Path(__file__).with_name("thresholds.json")


@dataclass(frozen=True)
class Calibrated:
    """A threshold and what it measured on the calibration set's held-out half."""

    threshold: float
    precision: float | None = None
    recall: float | None = None
    aligned: float | None = None  # near: the pixel check's thresholds (None: the cosine alone)
    detail: float | None = None

    @property
    def verified(self) -> bool:
        return self.aligned is not None and self.detail is not None


@dataclass(frozen=True)
class Thresholds:
    """The cosines one run decides by: ``near`` for edited copies, ``similar`` for look-alikes
    (same scene or burst), each with what it measured when it is a calibrated one."""

    near: Calibrated
    similar: Calibrated
    preset: str | None  # None: --threshold chose ``near``

    def tier_of(self, score: float, check: tuple[float, float] | None = None) -> str | None:
        """"near", "similar" or None for a pair of different pixels with this cosine and, when
        near copies are verified, these (aligned, detail) scores of :mod:`.verify` (None: not
        checked, or its files could not be read)."""
        near = self.near
        if score >= near.threshold and (not near.verified or (
                check is not None and check[0] >= (near.aligned or 0)
                and check[1] >= (near.detail or 0))):
            return "near"
        return "similar" if score >= self.similar.threshold else None

    def floor(self, tier: str) -> float:
        """The lowest cosine a pair of ``tier`` or closer can have."""
        if tier == "exact":
            return SAME_PIXELS_COSINE
        if tier == "near":
            return self.near.threshold
        return min(self.near.threshold, self.similar.threshold)


@functools.cache
def _table() -> dict[str, dict]:
    return json.loads(_FILE.read_text())["models"]


def calibrated_models() -> list[str]:
    return sorted(_table())


def thresholds_for(model: str, *, preset: str | None = None, threshold: float | None = None,
                   verify: bool = True) -> Thresholds:
    """The thresholds for ``model``: a calibrated preset (default ``normal``; with ``verify``
    false, the one for a cosine alone), or ``threshold``, the near copies' cosine, with the
    ``normal`` preset's pixel check when ``verify`` (and the model is calibrated: else the
    cosine alone). ``similar`` stays the calibrated one, or is that threshold less 0.1 for a
    model without calibration. UsageError for an unknown preset, a threshold out of range, or
    a model without calibration and no ``threshold``."""
    if preset is not None and threshold is not None:
        raise UsageError("Give a preset or a threshold, not both.")
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"Unknown preset {preset!r}: use one of {', '.join(PRESETS)}.")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise UsageError(f"A threshold is a cosine in (0, 1], got {threshold}.")
    entry = _table().get(model)
    if threshold is not None:
        similar = (Calibrated(**entry["similar"]) if entry
                   else Calibrated(max(0.0, threshold - 0.1)))
        if similar.threshold > threshold and not (verify and entry):
            similar = Calibrated(threshold)
        check = entry["near"][DEFAULT_PRESET] if verify and entry else {}
        return Thresholds(Calibrated(threshold, aligned=check.get("aligned"),
                                     detail=check.get("detail")), similar, None)
    if entry is None:
        raise UsageError(
            f"No duplicate thresholds are calibrated for model {model!r} (calibrated: "
            f"{', '.join(calibrated_models())}): pass --threshold COSINE, e.g. --threshold 0.9, "
            "or calibrate it with benchmarks/calibrate_dedup.py --models " + model + ".")
    chosen = preset or DEFAULT_PRESET
    near = entry["near" if verify else "near_cosine"][chosen]
    return Thresholds(Calibrated(**near), Calibrated(**entry["similar"]), chosen)
