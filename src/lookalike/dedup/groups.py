"""Groups of duplicates around a representative, and which copy to keep.

Groups are never connected components: those chain unrelated images through a run of
look-alikes (A like B, B like C...) into one huge group. Here the images are taken best first (by
:func:`keeper_order`: the copy one would keep), and each one not yet grouped becomes the
representative of a group of its own neighbours that are not grouped yet, up to ``max_size``
images. So every member passes the threshold against the representative itself, the
representative is the copy suggested to keep, and a chain A - B - C groups A with B and leaves C.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..storage import Decision, ImageRecord
from ..thresholds import TIERS
from ..types import shown_uri
from .pairs import Pair

#: Formats that keep every pixel as it was: a copy in one of these beats a re-encoded one.
LOSSLESS = {".png", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".dng", ".raw",
            ".cr2", ".nef", ".arw", ".orf", ".rw2"}


@dataclass(frozen=True)
class Member:
    """An image in a group, with its tie to the representative (none for the representative)."""

    image_id: int
    uri: str
    width: int | None
    height: int | None
    size: int | None
    tier: str | None = None  # "exact", "near" or "similar"; None for the representative
    cosine: float = 1.0
    how: str = ""  # for exact members: "same bytes" or "same pixels"
    check: tuple[float, float] | None = None  # (aligned, detail) of the pixel check, if made

    def to_dict(self) -> dict[str, Any]:
        aligned, detail = self.check or (None, None)
        return {"id": self.image_id, "uri": shown_uri(self.uri), "width": self.width,
                "height": self.height, "size": self.size, "tier": self.tier,
                "cosine": round(self.cosine, 4), "how": self.how or None,
                "aligned": None if aligned is None else round(aligned, 4),
                "detail": None if detail is None or detail < -0.5 else round(detail, 4)}


@dataclass(frozen=True)
class DuplicateGroup:
    """A representative (the copy suggested to keep, and why) and its duplicates, closest
    first. ``tier`` is the loosest tie in the group; ``weakest`` its lowest cosine."""

    keep: Member
    reason: str
    members: tuple[Member, ...]
    tier: str = field(init=False)
    weakest: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tier", max((m.tier or "exact" for m in self.members),
                                             key=TIERS.index))
        object.__setattr__(self, "weakest", min(m.cosine for m in self.members))

    @property
    def ids(self) -> list[int]:
        return [self.keep.image_id, *(m.image_id for m in self.members)]

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "weakest": round(self.weakest, 4),
                "keep": self.keep.to_dict(), "reason": self.reason,
                "members": [m.to_dict() for m in self.members]}


def make_groups(pairs: Sequence[Pair], records: dict[int, ImageRecord],
                decisions: Iterable[Decision] = (), *, max_size: int = 50,
                prefer: Sequence[str] = ()) -> list[DuplicateGroup]:
    """Groups around representatives (module docstring) of at most ``max_size`` images, best
    group first; the representative is the best copy by :func:`keeper_order`.

    Copies (exact and near pairs) are grouped first, so a look-alike never takes an original
    away from its own copies; then images only ``similar`` to others form groups of their own
    the same way, and any left over joins the group of a representative it looks like (the
    closest with room)."""
    if max_size < 2:
        raise ValueError("a group holds at least two images")
    close = _links(p for p in pairs if p.tier != "similar")
    loose = _links(p for p in pairs if p.tier == "similar")
    order = keeper_order(list({*close, *loose}), records, decisions, prefer)
    members: dict[int, list[tuple[int, Pair]]] = {}  # representative -> its members
    grouped: set[int] = set()
    _greedy(order, close, grouped, members, max_size)
    _greedy(order, loose, grouped, members, max_size)
    for image_id in order:  # a look-alike left over joins a group it looks like
        if image_id in grouped:
            continue
        joins = [(pair.score, other, pair) for pair in loose[image_id]
                 if (other := pair.b if pair.a == image_id else pair.a) in members
                 and len(members[other]) < max_size - 1]
        if joins:
            _, rep, pair = max(joins, key=lambda j: (j[0], -j[1]))
            members[rep].append((image_id, pair))
            grouped.add(image_id)
    groups = []
    for rep, taken in members.items():
        ranked = [rep, *(other for other, _ in taken)]
        runner_up = min(ranked[1:], key=keeper_order(ranked, records, decisions, prefer).index)
        ordered = sorted(taken, key=lambda t: (TIERS.index(t[1].tier), -t[1].score, t[0]))
        groups.append(DuplicateGroup(
            _member(records[rep]), _reason(records[rep], records[runner_up], decisions, prefer),
            tuple(_member(records[other], pair) for other, pair in ordered)))
    groups.sort(key=lambda g: (TIERS.index(g.tier), -len(g.members), -g.weakest, g.keep.uri))
    return groups


def _links(pairs: Iterable[Pair]) -> dict[int, list[Pair]]:
    links: dict[int, list[Pair]] = defaultdict(list)
    for pair in pairs:
        links[pair.a].append(pair)
        links[pair.b].append(pair)
    return links


def _greedy(order: list[int], links: dict[int, list[Pair]], grouped: set[int],
            members: dict[int, list[tuple[int, Pair]]], max_size: int) -> None:
    """Best first, each image not grouped yet takes its neighbours (by ``links``) that are not
    grouped yet, closest first, into a group it represents."""
    for image_id in order:
        if image_id in grouped or image_id not in links:
            continue
        ties = sorted(((p.b if p.a == image_id else p.a, p) for p in links[image_id]),
                      key=lambda t: (TIERS.index(t[1].tier), -t[1].score, t[0]))
        taken = [(other, pair) for other, pair in ties if other not in grouped][:max_size - 1]
        if taken:
            grouped.add(image_id)
            grouped.update(other for other, _ in taken)
            members[image_id] = taken


def keeper_order(ids: list[int], records: dict[int, ImageRecord],
                 decisions: Iterable[Decision] = (), prefer: Sequence[str] = ()) -> list[int]:
    """``ids`` best copy first: chosen to keep by a person; in a ``prefer`` folder (earlier
    folders first); most pixels; a lossless format; the larger file (less compressed); the
    richest EXIF; the oldest file; then by path."""
    chosen = {d.keep for d in decisions if d.verdict == "duplicate" and d.keep}
    exif = _ExifCounts(records)
    return sorted(ids, key=lambda i: _Key(records[i], chosen, prefer, exif))


class _ExifCounts:
    """How many EXIF tags each file has, read only when the earlier rules tie."""

    def __init__(self, records: dict[int, ImageRecord]) -> None:
        self._records, self._counts = records, {}  # type: dict[int, ImageRecord], dict[int, int]

    def __call__(self, image_id: int) -> int:
        if image_id not in self._counts:
            self._counts[image_id] = exif_tags(self._records[image_id].uri)
        return self._counts[image_id]


def exif_tags(uri: str) -> int:
    """The number of EXIF tags in a local file's header (0 for objects, or when unreadable)."""
    if "://" in uri:
        return 0
    try:
        with Image.open(uri) as image:
            return len(image.getexif())
    except Exception:  # any unreadable header counts as none: it only ranks copies
        return 0


class _Key:
    """Sort key for :func:`keeper_order`: compares rule by rule, reading EXIF only on a tie."""

    def __init__(self, record: ImageRecord, chosen: set[str], prefer: Sequence[str],
                 exif: Callable[[int], int]) -> None:
        self.record, self.exif = record, exif
        self.early = (record.content_hash not in chosen, _preferred_rank(record.uri, prefer),
                      -(record.width or 0) * (record.height or 0),
                      Path(record.uri).suffix.lower() not in LOSSLESS, -(record.size or 0))
        self.late = (record.mtime_ns or 0, record.uri, record.id)

    def __lt__(self, other: _Key) -> bool:
        if self.early != other.early:
            return self.early < other.early
        mine, theirs = -self.exif(self.record.id), -other.exif(other.record.id)
        if mine != theirs:
            return mine < theirs
        return self.late < other.late


def _preferred_rank(uri: str, prefer: Sequence[str]) -> int:
    for rank, folder in enumerate(prefer):
        if os.path.commonpath([os.path.abspath(folder), os.path.abspath(uri)]) \
                == os.path.abspath(folder):
            return rank
    return len(prefer)


def _reason(keep: ImageRecord, other: ImageRecord, decisions: Iterable[Decision],
            prefer: Sequence[str]) -> str:
    """Why ``keep`` comes before ``other``: the first rule of :func:`keeper_order` that
    separates them."""
    if any(d.verdict == "duplicate" and d.keep == keep.content_hash for d in decisions):
        return "chosen by you"
    if _preferred_rank(keep.uri, prefer) < _preferred_rank(other.uri, prefer):
        return f"in the preferred folder {prefer[_preferred_rank(keep.uri, prefer)]}"
    pixels = [(r.width or 0) * (r.height or 0) for r in (keep, other)]
    if pixels[0] > pixels[1]:
        return f"largest resolution ({keep.width}x{keep.height})"
    formats = [Path(r.uri).suffix.lower() for r in (keep, other)]
    if formats[0] in LOSSLESS and formats[1] not in LOSSLESS:
        return f"lossless format ({formats[0].lstrip('.').upper()})"
    if (keep.size or 0) > (other.size or 0):
        return f"largest file ({keep.size:,} bytes): least compressed"
    tags = [exif_tags(r.uri) for r in (keep, other)]
    if tags[0] > tags[1]:
        return f"richest EXIF ({tags[0]} tags)"
    if (keep.mtime_ns or 0) < (other.mtime_ns or 0):
        return "oldest file"
    return "first by path"


def _member(record: ImageRecord, pair: Pair | None = None) -> Member:
    if pair is None:
        return Member(record.id, record.uri, record.width, record.height, record.size)
    return Member(record.id, record.uri, record.width, record.height, record.size, pair.tier,
                  pair.score, pair.how, pair.check)
