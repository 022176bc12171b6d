"""Duplicates over HTTP: ``GET /duplicates`` (paged groups), ``POST /duplicates/decisions``, and
what an upload answers about its own duplicates (``POST /images?check_duplicates=true``) and
about a watchlist (``serve --screen-against``).

A scan of the whole collection is kept until the store's generation or the decisions change, so
paging through the groups scans once; one scan runs at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query

from ..collection import Collection
from ..dedup import DuplicateReport, decide, find_duplicates, thresholds_for
from ..dedup.matching import duplicates_of, screen
from .errors import ApiError

log = logging.getLogger("lookalike.server")
SCREEN_ACTIONS = ("flag", "reject")


class DuplicateScans:
    """The last scans of one collection, by their parameters, while nothing has changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple[Any, ...], DuplicateReport] = {}
        self._state: tuple[int, int] | None = None

    def report(self, col: Collection, tier: str, preset: str | None, threshold: float | None,
               max_group: int) -> DuplicateReport:
        with self._lock:
            state = (col.store.generation(), hash(tuple(col.store.decisions())))
            if state != self._state:
                self._kept.clear()
                self._state = state
            key = (tier, preset, threshold, max_group)
            if key not in self._kept:
                self._kept[key] = find_duplicates(col, tier=tier, preset=preset,
                                                  threshold=threshold, max_group=max_group,
                                                  show_progress=False)
            return self._kept[key]


class Screening:
    """Uploads screened against a watchlist collection: ``flag`` answers (and logs) the match,
    ``reject`` refuses the upload with 422 ``screened``."""

    def __init__(self, watchlist: str, action: str, runtime: dict[str, Any]) -> None:
        if action not in SCREEN_ACTIONS:
            raise ValueError(f"screen action {action!r}")
        self.action = action
        self.watchlist = Collection.open(watchlist, **runtime)
        self.thresholds = thresholds_for(self.watchlist.model_name)

    def check(self, data: bytes) -> dict[str, Any] | None:
        """What an upload's answer says of its screening: whether it matched and how closely
        (the watchlist image and its score stay in the log: an uploader who saw them could edit
        an image until it slips under the threshold)."""
        [result] = screen(self.watchlist, [data], self.thresholds)
        if result.match is None:
            return None
        m = result.match
        log.warning("Upload matches watchlist image %s (%s, %s, cosine %.3f)%s",
                    m.image_id, m.uri, m.tier, m.cosine,
                    ": refused" if self.action == "reject" else "")
        if self.action == "reject":
            raise ApiError(422, "screened", "The image matches an image on this server's "
                           "watchlist; it was not stored.")
        return {"matched": True, "tier": m.tier}

    def close(self) -> None:
        self.watchlist.close()


def duplicates_routes(app: FastAPI, collection: Callable[[], Collection]) -> None:
    scans = DuplicateScans()

    @app.get("/duplicates", tags=["duplicates"])
    def duplicates(
        tier: Annotated[str, Query(description="exact, near or similar (each includes the "
                                               "closer tiers).")] = "near",
        preset: Annotated[str | None, Query(description="strict, normal or loose "
                                                        "[default normal].")] = None,
        threshold: Annotated[float | None, Query(description="Near-copy cosine, instead of "
                                                             "a preset.")] = None,
        max_group: Annotated[int, Query(ge=2, le=100_000)] = 50,
        page: Annotated[int, Query(ge=1)] = 1,
        per_page: Annotated[int, Query(ge=1, le=500)] = 20,
    ) -> dict[str, Any]:
        """The collection's duplicate groups, best first, a page at a time: each around the
        copy suggested to keep (and why), with every member's tier and cosine to it."""
        report = scans.report(collection(), tier, preset, threshold, max_group)
        body = report.to_dict()
        groups = body.pop("groups")
        start = (page - 1) * per_page
        shown = groups[start:start + per_page]
        for group in shown:
            for image in (group["keep"], *group["members"]):
                image["thumbnail_url"] = f"/images/{image['id']}/thumbnail"
                image["file_url"] = f"/images/{image['id']}/file"
        return {**body, "total_groups": len(groups), "page": page, "per_page": per_page,
                "groups": shown}

    @app.post("/duplicates/decisions", tags=["duplicates"])
    def decisions(
        images: Annotated[list[int], Body(min_length=2, max_length=10_000,
                                          description="Ids of the images decided on.")],
        verdict: Annotated[str | None, Body(description="distinct (not duplicates), "
                                                        "duplicate, or null to forget.")],
        keep: Annotated[int | None, Body(description="With duplicate: the id to keep.")] = None,
    ) -> dict[str, Any]:
        """Record a verdict on every pair of ``images``: ``distinct`` pairs are never grouped
        again; ``duplicate`` with ``keep`` makes that copy the one suggested to keep. Kept by
        content, so it survives re-indexing, renames and moves."""
        pairs = decide(collection(), images, verdict, keep=keep)
        return {"pairs": pairs, "verdict": verdict, "keep": keep}


def upload_duplicates(col: Collection, image_id: int) -> list[dict[str, Any]]:
    """The exact and near duplicates of a just-stored upload, as an upload answers them."""
    found = duplicates_of(col, image_id, thresholds_for(col.model_name))
    return [{**m.to_dict(), "thumbnail_url": f"/images/{m.image_id}/thumbnail"} for m in found]
