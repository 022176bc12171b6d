"""ASGI middleware, outermost first: request timing, API keys, and the request-body limit.

Written as plain ASGI so that a refused request (wrong key, oversize body) is answered before the
application reads a byte of its body.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body

# Open with an API key too: health, the web page, and the API description (which holds no data,
# only what the README says). The README's security paragraph lists them; a test holds it to it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/openapi.json",
                        "/docs/oauth2-redirect", "/redoc"})
#: Routes that change the collection when posted to (or deleted): they need the write key.
WRITE_PATHS = ("/images", "/duplicates/decisions")
DOCS_ASSETS = "/docs-assets"  # Swagger UI and ReDoc scripts, served by the app
READ_SECONDS = "lookalike.read_seconds"  # scope key: how long receiving the body took


async def _refuse(send: Send, status: int, code: str, message: str,
                  headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(code, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Latencies:
    """Recent request latencies per route, for /stats (the last 10,000 of each)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=keep))
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # requests, errors

    def record(self, route: str, seconds: float, status: int) -> None:
        with self._lock:
            self._seconds[route].append(seconds)
            counts = self._counts[route]
            counts[0] += 1
            counts[1] += status >= 400

    def summary(self) -> dict[str, dict[str, Any]]:
        import numpy as np

        with self._lock:
            snapshot = {route: list(times) for route, times in self._seconds.items()}
            counts = {route: tuple(c) for route, c in self._counts.items()}
        out = {}
        for route, times in sorted(snapshot.items()):
            p50, p95, p99 = np.percentile(np.array(times) * 1000.0, [50, 95, 99])
            out[route] = {"requests": counts[route][0], "errors": counts[route][1],
                          "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
                          "p99_ms": round(float(p99), 2)}
        return out


class RequestTiming:
    """Records each request's latency under its route template and adds safety headers."""

    def __init__(self, app: ASGIApp, latencies: Latencies) -> None:
        self.app, self.latencies = app, latencies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            name = f"{scope['method']} {getattr(route, 'path', 'unmatched')}"
            self.latencies.record(name, time.perf_counter() - started, status)


class ApiKeys:
    """Checks ``X-API-Key`` (or ``Authorization: Bearer``) when keys are configured.

    With ``api_key`` every route but ``OPEN_PATHS`` and their assets needs a key; with
    ``write_key`` uploads, deletes and duplicate decisions need that one (reads accept either).
    Keys are compared as UTF-8 bytes, in constant time: a key may be any text, and a header is
    never decoded.
    """

    def __init__(self, app: ASGIApp, api_key: str | None, write_key: str | None) -> None:
        self.app = app
        # compare_digest raises on non-ASCII str, so both sides are bytes.
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.write_key = write_key.encode("utf-8") if write_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.api_key or self.write_key):
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if (path in OPEN_PATHS or path.startswith(("/static/", DOCS_ASSETS + "/"))
                or method == "OPTIONS"):
            await self.app(scope, receive, send)
            return
        given = _presented_key(scope)
        writing = method in ("POST", "PUT", "PATCH", "DELETE") and path.startswith(WRITE_PATHS)
        if writing and self.write_key:
            allowed = [self.write_key]
        else:
            allowed = [k for k in (self.api_key, self.write_key) if k] if self.api_key else []
        if not allowed or any(given and secrets.compare_digest(given, k) for k in allowed):
            await self.app(scope, receive, send)
            return
        if given and writing and self.api_key and secrets.compare_digest(given, self.api_key):
            await _refuse(send, 403, "forbidden",
                          "This key may search but not change the collection; send the write "
                          "key.")
            return
        await _refuse(send, 401, "unauthorized",
                      "Missing or wrong API key: send it in the X-API-Key header.",
                      {"WWW-Authenticate": "Bearer"})


def _presented_key(scope: Scope) -> bytes | None:
    headers = dict(scope.get("headers", []))
    key = headers.get(b"x-api-key")
    if key is None:
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            key = auth[7:].strip()
    return key or None


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with a 413 before the app reads them, and
    bodies that stall for ``idle_timeout`` seconds with a 408 (the connection is closed).

    A declared Content-Length over the limit is refused at once; otherwise the body is read up
    to the limit (at most ``limit`` bytes in memory) and handed to the app in one piece, so no
    route ever waits on the network.
    """

    def __init__(self, app: ASGIApp, limit: int, idle_timeout: float) -> None:
        self.app, self.limit, self.idle_timeout = app, limit, idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = (f"The request body is over the upload limit of {self.limit:,} bytes; "
                   "send a smaller image or raise --max-upload-bytes.")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _refuse(send, 413, "payload_too_large", too_big)
            return
        started = time.perf_counter()
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except TimeoutError:
                await _refuse(send, 408, "request_timeout",
                              f"No more of the request body arrived for {self.idle_timeout:g} "
                              "seconds; send the whole body without pausing.",
                              {"Connection": "close"})
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _refuse(send, 413, "payload_too_large", too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        scope[READ_SECONDS] = time.perf_counter() - started
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
