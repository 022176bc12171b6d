"""How `lookalike serve` holds connections: none may stall forever, and there are never more
than the process has file descriptors for.

uvicorn closes a connection that idles between requests (``timeout_keep_alive``), but not one
that connects and sends nothing, or half a request head, and it accepts connections until
``accept()`` fails for want of descriptors; then the store, the index and every new client fail
too. Measured (benchmarks/bench_hostile.py): 300 stalled clients against a soft limit of 256
descriptors, macOS's default, made every normal request fail. So the protocol here adds two
guards to uvicorn's own (httptools) one:

- a deadline for each request head, from its first byte (or from connecting): a slow drip of
  header bytes does not extend it;
- a bound on open connections: past it a new connection takes the place of the one that has
  waited longest for its request head (so a flood of stalled heads cannot lock clients out
  before the deadline ends it), or, when every connection is busy with a request, is answered
  503 and closed at once.

A stalled *body* is the application's concern (``BodyLimit`` answers 408), and the bound is kept
under the open-file limit by :func:`fit_open_files`.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import error_body

#: Descriptors kept for everything but client sockets: SQLite (three per connection), index
#: files, uploads being written, files being sent, pipes. An idle server holds about 25.
FD_RESERVE = 256

_BUSY = json.dumps(error_body(
    "busy", "The server has as many connections as it allows (--max-connections); retry shortly."
)).encode()
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                  b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s"
                  % (len(_BUSY), _BUSY))


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on request heads and a connection bound."""

    def __init__(self, *args: Any, head_timeout: float, max_connections: int,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self._head_deadline: asyncio.TimerHandle | None = None

    @classmethod
    def configured(cls, *, head_timeout: float,
                   max_connections: int) -> type[asyncio.Protocol]:
        """What to pass as uvicorn's ``http=``: uvicorn only calls it, and pickles it for
        worker processes, so a partial of this class does."""
        return cast(type[asyncio.Protocol], functools.partial(
            cls, head_timeout=head_timeout, max_connections=max_connections))

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections and not self._evict_slowest_head():
            self.transport = transport  # connection_lost closes it again
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:  # the next request on a kept-alive connection
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _evict_slowest_head(self) -> bool:
        """Close the connection that has waited longest for its request head, if any does."""
        waiting = {c: c._head_deadline.when() for c in self.connections
                   if isinstance(c, GuardedHttpProtocol) and c._head_deadline is not None}
        if not waiting:
            return False
        min(waiting, key=waiting.__getitem__)._head_timed_out()
        return True

    def _arm_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def fit_open_files(max_connections: int) -> int:
    """The connection bound this process can keep: raise the soft open-file limit toward the
    hard one to fit ``max_connections`` and a reserve, and return ``max_connections``, or less
    where the hard limit is lower. Worker processes inherit the raised limit."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to fit
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):  # macOS caps it below an "unlimited" hard limit
            pass
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - min(FD_RESERVE, soft // 4)))
