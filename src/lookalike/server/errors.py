"""Every error the HTTP API answers has one shape, ``{"error": {"code", "message"}}``, made here.

Library exceptions map to a status and a stable code; request-level problems are raised as
:class:`ApiError`. Nothing a client sends should end as a 500: that is kept for real bugs.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    BusyError,
    CollectionLockedError,
    DecodeError,
    ImageFileError,
    ImageNotFoundError,
    LookalikeError,
    ObjectStoreError,
    PayloadTooLargeError,
    ReadOnlyCollectionError,
    UsageError,
)
from ..where import WhereError

log = logging.getLogger("lookalike.server")

# DecodeError.reason -> (status, code)
_DECODE = {
    "empty": (400, "empty_file"),
    "not_image": (415, "unsupported_media_type"),
    "needs_decoder": (415, "unsupported_media_type"),
    "too_many_pixels": (422, "too_many_pixels"),
    "corrupt": (422, "invalid_image"),
    "unreadable": (422, "invalid_image"),
    "too_large": (413, "payload_too_large"),
}
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               422: "invalid_parameter", 503: "not_ready"}


class ApiError(Exception):
    """A request the API refuses: its status, a stable code, and what to do."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one place an error response is made."""
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def as_api_error(exc: BaseException) -> ApiError:
    """What an exception means to a client."""
    if isinstance(exc, ApiError):
        return exc
    message = str(exc)
    if isinstance(exc, DecodeError):
        status, code = _DECODE.get(exc.reason, (422, "invalid_image"))
        return ApiError(status, code, f"The upload is not a usable image: {message}.")
    if isinstance(exc, ImageNotFoundError):
        return ApiError(404, "not_found", message)
    if isinstance(exc, ImageFileError):
        if exc.reason == "changed":
            return ApiError(409, "file_changed", message)
        return ApiError(404, "file_missing", message)
    if isinstance(exc, PayloadTooLargeError):
        return ApiError(413, "payload_too_large", message)
    if isinstance(exc, ObjectStoreError):  # the image's object store: unreachable or refusing
        return ApiError(503, "object_store_unavailable", message,
                        {"Retry-After": "5"} if exc.transient else None)
    if isinstance(exc, CollectionLockedError):
        return ApiError(503, "busy", message, {"Retry-After": "5"})
    if isinstance(exc, ReadOnlyCollectionError):
        return ApiError(403, "read_only", message)
    if isinstance(exc, BusyError):
        return ApiError(503, "busy", message, {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, WhereError):
        return ApiError(400, "invalid_filter", message)
    if isinstance(exc, UsageError):
        return ApiError(400, "bad_request", message)
    if isinstance(exc, LookalikeError):
        return ApiError(500, "internal_error", message)
    return ApiError(500, "internal_error", "Internal error; the server log has the details.")


def install_handlers(app: FastAPI) -> None:
    async def lookalike_error(_: Request, exc: Exception) -> JSONResponse:
        error = as_api_error(exc)
        if error.status == 500:
            log.error("%s", exc, exc_info=exc)
        return error_response(error.status, error.code, error.message, error.headers)

    # Starlette types every handler's argument as Exception; each is registered for one class.
    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        problems = []
        for item in cast(RequestValidationError, exc).errors():
            loc = [str(part) for part in item.get("loc", ())]
            if loc and loc[0] in ("query", "path", "header", "cookie"):
                loc = loc[1:]  # "k", not "query.k": the client named it
            message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{'.'.join(loc)}: {message}" if loc else message)
        return error_response(422, "invalid_parameter", "; ".join(problems) or "Invalid request.")

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        http = cast(StarletteHTTPException, exc)
        status, detail = http.status_code, http.detail
        if status == 404 and detail == "Not Found":
            detail = "No such route; the API is described at /docs."
        return error_response(status, _HTTP_CODES.get(status, "error"), str(detail),
                              getattr(exc, "headers", None))

    app.add_exception_handler(ApiError, lookalike_error)
    app.add_exception_handler(LookalikeError, lookalike_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, lookalike_error)
