"""Searching within a slice over HTTP: the ``where``, ``max_per`` and ``collapse`` parameters
every search route takes, how a hit is answered (with its ``match`` label and folded copies),
and the routes that show what can be filtered on: ``GET /fields`` and ``GET /facets``, plus
``POST /search/vector`` for a JSON body.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, Query
from starlette.concurrency import run_in_threadpool

from ..collection import Collection
from ..errors import UsageError
from ..types import SearchHit, shown_uri
from ..where import MAX_KEY, Where, WhereError, parse_max_per
from .errors import ApiError

WHERE_HELP = ("Only images whose fields pass this filter expression, e.g. "
              "`format = jpeg and width >= 1000` (see the README's Filters).")
MAX_PER_HELP = "At most N results per value of a field: KEY=N, e.g. album=2."
COLLAPSE_HELP = "Fold copies of a better result into it (its `copies`)."
MAX_FACET_KEYS = 20

# Lengths are checked by the parsers, so a long where is a 400 invalid_filter everywhere.
WhereParam = Annotated[str | None, Query(description=WHERE_HELP)]
MaxPerParam = Annotated[str | None, Query(description=MAX_PER_HELP)]
CollapseParam = Annotated[bool, Query(description=COLLAPSE_HELP)]
#: What FastAPI reads as a boolean query parameter, the same in a form field.
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
_VECTOR_KEYS = {"vector", "k", "ef", "qe", "where", "max_per", "collapse"}


def within(where: str | None, max_per: str | None, collapse: bool | str | None
           ) -> dict[str, Any]:
    """The search keywords of a request's ``where``, ``max_per`` and ``collapse`` (from the
    query or a form), parsed: a bad expression is a 400 ``invalid_filter`` naming the problem."""
    try:
        parsed = Where.of(where)
        per = parse_max_per(max_per or None)
    except WhereError as exc:
        raise ApiError(400, "invalid_filter", str(exc)) from None
    except UsageError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    if isinstance(collapse, str):
        if collapse.lower() not in _TRUE + _FALSE:
            raise ApiError(422, "invalid_parameter",
                           f"collapse must be true or false, got {collapse[:20]!r}.")
        collapse = collapse.lower() in _TRUE
    return {"where": parsed, "max_per": per, "collapse": bool(collapse)}


def hit(found: SearchHit) -> dict[str, Any]:
    """A search result as the API answers it."""
    return {"image_id": found.image_id, "uri": shown_uri(found.uri),
            "score": round(found.score, 6), "distance": round(found.distance, 6),
            "match": found.match, "width": found.width, "height": found.height,
            "thumbnail_url": f"/images/{found.image_id}/thumbnail",
            "file_url": f"/images/{found.image_id}/file",
            "copies": [hit(c) for c in found.copies]}


def filter_routes(app: FastAPI, collection: Callable[[], Collection], max_k: int) -> None:
    @app.get("/fields", tags=["search"])
    def fields() -> dict[str, Any]:
        """Every field images have (metadata keys and the fields read from files), with how
        many images have it: what `where` can filter on."""
        keys = collection().store.field_keys()
        return {"fields": [{"key": key, "images": count} for key, count in keys]}

    @app.get("/facets", tags=["search"])
    def facets(
        keys: Annotated[str, Query(description="Comma-separated field names.")],
        where: WhereParam = None,
        top: Annotated[int, Query(ge=1, le=100, description="Values per field.")] = 20,
    ) -> dict[str, Any]:
        """The most common values of each field among the images passing `where`, with
        counts: what a filter on one of them would keep."""
        names = [k.strip() for k in keys.split(",") if k.strip()]
        if not names or len(names) > MAX_FACET_KEYS or any(len(n) > MAX_KEY for n in names):
            raise ApiError(400, "bad_request",
                           f"keys: 1 to {MAX_FACET_KEYS} comma-separated field names.")
        parsed = within(where, None, False)["where"]
        found = collection().store.facets(names, parsed, top=top)
        return {"where": parsed.text if parsed else None,
                "facets": {key: [{"value": v, "images": n} for v, n in found.get(key, [])]
                           for key in names}}

    @app.post("/search/vector", tags=["search"])
    async def search_vector(body: Annotated[dict[str, Any], Body(examples=[{
            "vector": [0.1, 0.2], "k": 10, "where": "format = jpeg", "max_per": "album=2",
            "collapse": True}])]) -> dict[str, Any]:
        """The images nearest to an embedding (the model's, e.g. from POST /embed), in a JSON
        body with `vector` and optionally `k`, `ef`, `qe`, `where`, `max_per`, `collapse`."""
        col = collection()
        unknown = sorted(set(body) - _VECTOR_KEYS)
        if unknown:  # a misspelt "wher" must not search unfiltered
            raise ApiError(422, "invalid_parameter", f"Unknown field(s) {', '.join(unknown)}; "
                           f"the body takes {', '.join(sorted(_VECTOR_KEYS))}.")
        vector = body.get("vector")
        if (not isinstance(vector, list) or len(vector) != col.dim
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in vector)):
            raise ApiError(422, "invalid_parameter",
                           f"vector: a list of {col.dim} finite numbers (this collection's "
                           f"model, {col.model_name}, makes {col.dim}-d embeddings).")
        query = np.asarray(vector, np.float32)
        norm = float(np.linalg.norm(query))
        if not norm > 0:
            raise ApiError(422, "invalid_parameter", "vector is all zeros: it has no direction.")
        options: dict[str, Any] = {}
        for knob, low, high, default in (("k", 1, max_k, 10), ("ef", 1, 100_000, None),
                                         ("qe", 0, 100, None)):
            value = body.get(knob, default)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not low <= value <= high):
                raise ApiError(422, "invalid_parameter",
                               f"{knob} must be an integer between {low} and {high}.")
            options[knob] = value
        where, max_per, collapse = (body.get(key) for key in ("where", "max_per", "collapse"))
        if not isinstance(where, (str, type(None))) or not isinstance(max_per, (str, type(None))):
            raise ApiError(422, "invalid_parameter", "where and max_per are text.")
        if not isinstance(collapse, (bool, type(None))):
            raise ApiError(422, "invalid_parameter", "collapse is true or false (JSON).")
        options.update(within(where, max_per, bool(collapse)))
        hits = await run_in_threadpool(lambda: col.search_vector(query / norm, **options))
        return {"results": [hit(h) for h in hits]}
