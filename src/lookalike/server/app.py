"""The HTTP API and the web page: `create_app(ServeConfig(...))` gives a FastAPI application.

Routes read the request, call the collection, and shape the answer; errors become the one JSON
error shape in `errors.py`. Blocking work (decoding, the model, the index, SQLite) runs in the
threadpool, so the event loop only moves bytes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, BinaryIO
from urllib.parse import parse_qsl

from fastapi import FastAPI, Query, Request
from fastapi.middleware import Middleware
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from pydantic import BeforeValidator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..errors import ImageNotFoundError
from ..imaging import content_hash
from ..types import MAX_IMAGE_ID, ImageDetails, SearchHit, is_decimal
from .config import ServeConfig
from .duplicates import duplicates_routes, upload_duplicates
from .errors import ApiError, error_response, install_handlers
from .filters import (
    COLLAPSE_HELP,
    CollapseParam,
    MaxPerParam,
    WhereParam,
    filter_routes,
    hit,
    within,
)
from .middleware import DOCS_ASSETS, READ_SECONDS, ApiKeys, BodyLimit, RequestTiming
from .models import (
    DeleteResponse,
    EmbedResponse,
    ErrorResponse,
    ImageOut,
    SearchResponse,
    SimilarResponse,
    UploadResponse,
)
from .service import Service

THUMBNAIL_SIDES = (64, 128, 256, 512)
MAX_QE = 100
QE_HELP = ("Query expansion: rank by the query blended with its N best matches (0: off) "
           "[default: the query_expansion setting, 2].")
_FORM_FIELDS = {"file", "metadata", "k", "ef", "qe", "where", "max_per", "collapse"}
_ASSETS = {"app.js": "text/javascript", "common.js": "text/javascript",
           "duplicates.js": "text/javascript", "filters.js": "text/javascript",
           "results.js": "text/javascript", "app.css": "text/css",
           "favicon.svg": "image/svg+xml"}
_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "metadata": {"type": "string", "description": "A JSON object (POST /images only)."},
    }}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in (
        (400, "No file, an empty file, or a bad field"), (401, "Missing or wrong API key"),
        (404, "No such image, or its file is gone"), (408, "The request body stalled"),
        (409, "The image's file changed since it was indexed"),
        (413, "Upload over the size limit"),
        (415, "Not an image"), (422, "Corrupt image, too many pixels, or a bad parameter"),
        (503, "Still loading, the collection is busy, or the image's object store is "
              "unreachable"),
    )
}


def create_app(config: ServeConfig) -> FastAPI:
    service = Service(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        service.start()
        yield
        await run_in_threadpool(service.close)

    middleware = [Middleware(RequestTiming, latencies=service.latencies)]
    if config.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
        ))
    middleware += [Middleware(ApiKeys, api_key=config.api_key, write_key=config.write_key),
                   Middleware(BodyLimit, limit=config.max_upload_bytes,
                              idle_timeout=config.body_timeout)]
    # FastAPIOffline serves /docs and /redoc with their scripts from this package, not a CDN.
    app = FastAPIOffline(
        title="lookalike", summary="Find images that look like this one.",
        lifespan=lifespan, middleware=middleware, responses=_ERRORS,
        static_url=DOCS_ASSETS, favicon_url="/static/favicon.svg",
    )
    app.state.service = service
    install_handlers(app)
    _routes(app, service, config)
    return app


def app_from_environment() -> FastAPI:
    """Factory for `serve --workers N`: each worker process reads its config from the env."""
    return create_app(ServeConfig.from_env())


def _routes(app: FastAPI, service: Service, config: ServeConfig) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up (it may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> dict[str, Any]:
        """200 once the model and index are loaded; 503 until then."""
        service.collection  # noqa: B018  (raises the 503)
        return {"ready": True, "load_s": round(service.load_seconds or 0.0, 2)}

    @app.get("/stats", tags=["health"])
    def stats() -> dict[str, Any]:
        """Counts, model, index, compaction, uptime and request latency percentiles."""
        return service.stats()

    @app.post("/search/visual", response_model=SearchResponse, tags=["search"],
              openapi_extra=_UPLOAD_BODY)
    async def search_visual(
        request: Request,
        k: Annotated[Integer | None, Query(description="Number of results [default 10].")] = None,
        ef: Annotated[Integer | None, Query(description="HNSW efSearch for this query.")] = None,
        qe: Annotated[Integer | None, Query(description=QE_HELP)] = None,
        where: WhereParam = None, max_per: MaxPerParam = None,
        collapse: Annotated[bool | None, Query(description=COLLAPSE_HELP)] = None,
    ) -> dict[str, Any]:
        """Images most similar to the uploaded one (multipart field `file`, or the raw body);
        the options may also come as form fields."""
        started = time.perf_counter()
        data, fields = await _read_upload(request)
        k = _bounded("k", k if k is not None else fields.get("k"), 10, 1, config.max_k)
        ef = _bounded("ef", ef if ef is not None else fields.get("ef"), None, 1, 100_000)
        qe = _bounded("qe", qe if qe is not None else fields.get("qe"), None, 0, MAX_QE)
        options = within(where if where is not None else fields.get("where"),
                         max_per if max_per is not None else fields.get("max_per"),
                         collapse if collapse is not None else fields.get("collapse"))
        took = {"read": request.scope.get(READ_SECONDS, 0.0) + time.perf_counter() - started}
        hits = await run_in_threadpool(_search_bytes, service, data, k, ef, qe, took, options)
        took["total"] = time.perf_counter() - started + request.scope.get(READ_SECONDS, 0.0)
        return {"results": [hit(h) for h in hits],
                "took_ms": {stage: round(s * 1000.0, 2) for stage, s in took.items()}}

    @app.post("/embed", response_model=EmbedResponse, tags=["search"],
              openapi_extra=_UPLOAD_BODY)
    async def embed(request: Request) -> dict[str, Any]:
        """The uploaded image's embedding (multipart field `file`, or the raw body): the vector
        this collection stores for those bytes, and the model's fingerprint."""
        started = time.perf_counter()
        data, _ = await _read_upload(request)
        read = request.scope.get(READ_SECONDS, 0.0) + time.perf_counter() - started
        result = await run_in_threadpool(service.embed, data)
        total = request.scope.get(READ_SECONDS, 0.0) + time.perf_counter() - started
        return {**result.to_dict(), "took_ms": {"read": round(read * 1000.0, 2),
                                                **result.timings_ms,
                                                "total": round(total * 1000.0, 2)}}

    @app.get("/search/similar/{image_id}", response_model=SimilarResponse, tags=["search"])
    def search_similar(image_id: Integer, k: Integer | None = None, ef: Integer | None = None,
                       qe: Annotated[Integer | None, Query(description=QE_HELP)] = None,
                       where: WhereParam = None, max_per: MaxPerParam = None,
                       collapse: CollapseParam = False) -> dict[str, Any]:
        """Look-alikes of an indexed image, from its stored vector (itself left out)."""
        started = time.perf_counter()
        image_id = _known_id(image_id)
        col = service.collection
        hits = col.search_similar(image_id, _bounded("k", k, 10, 1, config.max_k),
                                  ef=_bounded("ef", ef, None, 1, 100_000),
                                  qe=_bounded("qe", qe, None, 0, MAX_QE),
                                  **within(where, max_per, collapse))
        query = col.details(image_id)
        return {"query": _image(query), "results": [hit(h) for h in hits],
                "took_ms": {"total": round((time.perf_counter() - started) * 1000.0, 2)}}

    @app.post("/images", response_model=UploadResponse, status_code=201, tags=["images"],
              openapi_extra=_UPLOAD_BODY)
    async def upload(
        request: Request,
        check_duplicates: Annotated[bool, Query(
            description="Also answer the image's exact and near duplicates in the collection "
                        "(`duplicates`).")] = False,
    ) -> Any:
        """Store an image in the collection; it is searchable when this returns. Identical
        bytes uploaded before answer 200 with that image. With `serve --screen-against`, the
        image is first screened against the watchlist: `screened` says whether it matched (and
        the tier), or (`--screen-action reject`) the upload is refused with 422 `screened`."""
        data, fields = await _read_upload(request)
        metadata = _metadata(fields.get("metadata"))
        col = service.collection
        body: dict[str, Any] = {}
        if service.screening is not None:
            body["screened"] = await run_in_threadpool(service.screening.check, data)
        details, created = await run_in_threadpool(
            lambda: col.add_bytes(data, metadata=metadata, wait=config.write_wait))
        body = {"image": _image(details), "created": created, **body}
        if check_duplicates:
            body["duplicates"] = await run_in_threadpool(upload_duplicates, col,
                                                         details.image_id)
        return JSONResponse(body, status_code=201 if created else 200)

    @app.get("/images/{image_id}", response_model=ImageOut, tags=["images"])
    def image(image_id: Integer) -> dict[str, Any]:
        """An indexed image's location, size and metadata."""
        return _image(service.collection.details(_known_id(image_id)))

    @app.delete("/images/{image_id}", response_model=DeleteResponse, tags=["images"])
    def delete(image_id: Integer) -> dict[str, Any]:
        """Remove an image: gone from results at once (an uploaded file is deleted too)."""
        if not service.collection.remove([_known_id(image_id)], wait=config.write_wait):
            raise ImageNotFoundError(f"No indexed image has id {image_id}.")  # lost a race
        return {"deleted": image_id}

    @app.get("/images/{image_id}/file", tags=["images"], response_class=StreamingResponse)
    def image_file(image_id: Integer) -> StreamingResponse:
        """The image file itself, while it is still the file that was indexed (else 404
        file_missing or 409 file_changed). An S3 object is streamed through the server, in the
        version indexed (its ETag sent as If-Match)."""
        found = service.collection.open_file(_known_id(image_id))
        # Sent from the descriptor that was checked, never reopened by path.
        return StreamingResponse(_chunks(found.file, found.size), media_type=found.media_type,
                                 headers={"Content-Length": str(found.size),
                                          "Cache-Control": "private, max-age=3600"})

    @app.get("/images/{image_id}/thumbnail", tags=["images"],
             responses={200: {"content": {"image/jpeg": {}}}})
    def image_thumbnail(image_id: Integer, size: Integer = 256) -> Response:
        """A small JPEG of the image (cached), at most `size` pixels a side."""
        if size not in THUMBNAIL_SIDES:
            raise ApiError(422, "invalid_parameter",
                           f"size must be one of {', '.join(map(str, THUMBNAIL_SIDES))}.")
        jpeg = service.collection.thumbnail(_known_id(image_id), size)
        # Ids are never reused, so a thumbnail never changes.
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})

    duplicates_routes(app, lambda: service.collection)
    filter_routes(app, lambda: service.collection, config.max_k)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return _asset("index.html", "text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _ASSETS:  # a fixed list: no request path reaches the filesystem
            raise ApiError(404, "not_found", f"No asset {name!r}.")
        return _asset(name, _ASSETS[name])


def _asset(name: str, kind: str) -> Response:
    try:
        content = (resources.files("lookalike.server") / "static" / name).read_bytes()
    except FileNotFoundError:
        return error_response(404, "not_found", f"The web page's {name} is not installed.")
    cls = HTMLResponse if kind == "text/html" else Response
    return cls(content, media_type=kind, headers={"Cache-Control": "no-cache"})


async def _read_upload(request: Request) -> tuple[bytes, dict[str, str]]:
    """The uploaded file's bytes and any other form fields; never trusts a declared type."""
    content_type = request.headers.get("content-type", "")
    missing = ApiError(400, "missing_file", "Send the image as a multipart/form-data field "
                       "named 'file', or as the raw request body.")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise missing
        data = await upload.read()
        if not data:
            raise ApiError(400, "empty_file", "The uploaded file is empty (0 bytes).")
        return data, fields
    # Anything else is the raw image, whatever it is declared as: `curl --data-binary @x.jpg`
    # declares application/x-www-form-urlencoded unless told otherwise. A real form (of this
    # API's fields only) was sent without its file; anything else is sniffed like any upload.
    data = await request.body()
    if not data or (content_type.startswith("application/x-www-form-urlencoded")
                    and _is_api_form(data)):
        raise missing
    return data, {}


def _is_api_form(data: bytes) -> bool:
    """Whether ``data`` is a URL-encoded form of this API's fields (``k=3&qe=0``)."""
    if not data.isascii():
        return False
    fields = parse_qsl(data.decode("ascii"), keep_blank_values=True)
    return bool(fields) and {name for name, _ in fields} <= _FORM_FIELDS


def _chunks(file: BinaryIO, size: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """The first ``size`` bytes of ``file`` (what Content-Length promised), then closes it."""
    with file:
        while size > 0 and (data := file.read(min(chunk, size))):
            size -= len(data)
            yield data


def _decimal(value: Any) -> Any:
    """``value``, refused when it is text but not an integer in plain decimal digits: Python
    and pydantic would also take ``1_0``, `` 10`` or ``+10``."""
    if isinstance(value, str) and not is_decimal(value):
        raise ValueError(f"{value!r} is not an integer in decimal digits")
    return value


Integer = Annotated[int, BeforeValidator(_decimal)]  # a query or path parameter


def _known_id(image_id: int) -> int:
    """``image_id``, or a 404 when no image can have it (the store would overflow on it)."""
    if not 1 <= image_id <= MAX_IMAGE_ID:
        raise ImageNotFoundError(f"No indexed image has id {image_id}.")
    return image_id


def _bounded(name: str, raw: Any, default: int | None, low: int, high: int) -> Any:
    if raw is None or raw == "":
        return default
    try:
        value = int(_decimal(raw))
    except (TypeError, ValueError):
        raise ApiError(422, "invalid_parameter",
                       f"{name} must be an integer, got {raw!r}.") from None
    if not low <= value <= high:
        raise ApiError(422, "invalid_parameter",
                       f"{name} must be between {low} and {high}, got {value}.")
    return value


def _metadata(raw: str | None) -> dict[str, Any] | None:
    """The metadata field as a JSON object, refused unless it is strict JSON that can be stored
    and sent back: no NaN or Infinity (nor numbers that overflow to it), no integers over
    Python's 4,300-digit limit, no nesting deeper than the parser goes, no lone surrogates."""
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw, parse_constant=_not_json, parse_float=_finite_float)
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")  # as stored
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_metadata", f"metadata is not valid JSON: {exc}.") from None
    except RecursionError:
        raise ApiError(400, "invalid_metadata",
                       "metadata is nested too deeply; send a flatter JSON object.") from None
    except (ValueError, UnicodeError) as exc:  # NaN, a huge integer, a lone surrogate
        reason = str(exc).split("; use sys.set_int_max_str_digits")[0]  # advice for Python code
        raise ApiError(400, "invalid_metadata",
                       f"metadata is not strict JSON ({reason}); send finite numbers, integers "
                       "of at most 4,300 digits and text without lone surrogates.") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_metadata", "metadata must be a JSON object.")
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]}{'...' if len(text) > 20 else ''} overflows a float")
    return number


def _search_bytes(service: Service, data: bytes, k: int, ef: int | None, qe: int | None,
                  took: dict[str, float], options: dict[str, Any]) -> list[SearchHit]:
    col = service.collection
    started = time.perf_counter()
    pixels = col.model_input(data)
    decoded = time.perf_counter()
    vector = col.embedder.embed_pixels(pixels[None])[0]
    embedded = time.perf_counter()
    hits = col.search_vector(vector, k, ef=ef, qe=qe, query_hash=lambda: content_hash(data),
                             **options)
    took.update(decode=decoded - started, embed=embedded - decoded,
                search=time.perf_counter() - embedded)
    return hits


def _image(details: ImageDetails) -> dict[str, Any]:
    return {**details.to_dict(), "thumbnail_url": f"/images/{details.image_id}/thumbnail",
            "file_url": f"/images/{details.image_id}/file"}
