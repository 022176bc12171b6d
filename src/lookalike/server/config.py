"""What `lookalike serve` is configured with: flags over LOOKALIKE_* variables over defaults."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import settings
from ..errors import UsageError

CONFIG_ENV = "LOOKALIKE_SERVE_CONFIG"  # how `serve --workers N` hands its config to each worker


@dataclass(frozen=True)
class ServeConfig:
    """Everything one server process needs; see `lookalike serve --help` for each field."""

    collection: str
    api_key: str | None = None
    write_key: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    cors_origins: tuple[str, ...] = ()
    max_k: int = 1000
    batching: bool = True
    auto_compact: bool = True
    write_wait: float = 10.0  # seconds an upload or delete waits for another writer
    head_timeout: float = 10.0  # seconds to send a request's head (see server/connections.py)
    body_timeout: float = 30.0  # seconds to wait for each further piece of a body
    max_connections: int = 1000  # open connections per server process
    decode_memory_bytes: int = 768 * 1024 * 1024  # all decodes at once, every worker together
    decode_wait: float = 10.0  # seconds a decode waits for room in that budget
    background_load: bool = True  # False: load before accepting connections (serve --workers N)
    consume: str | None = None  # a queue this process also consumes (see lookalike.queues)
    consume_batch_size: int = 32
    consume_max_attempts: int = 5
    consume_allow_paths: tuple[str, ...] = ()
    screen_against: str | None = None  # a watchlist collection uploads are screened against
    screen_action: str = "flag"  # flag: answer and log a match; reject: refuse the upload
    runtime: dict[str, Any] = field(default_factory=dict)  # Collection.open options

    def __post_init__(self) -> None:
        for name in ("head_timeout", "body_timeout", "max_connections", "decode_memory_bytes",
                     "decode_wait"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)!r}: set "
                                 f"--{name.replace('_', '-')} or LOOKALIKE_{name.upper()}.")

    @classmethod
    def from_settings(cls, collection: str | None = None, *, api_key: str | None = None,
                      write_key: str | None = None, max_upload_bytes: int | None = None,
                      cors_origins: tuple[str, ...] | None = None,
                      head_timeout: float | None = None, body_timeout: float | None = None,
                      max_connections: int | None = None, **rest: Any) -> ServeConfig:
        origins = cors_origins or tuple(
            o.strip() for o in settings.resolve("cors_origins").split(",") if o.strip()
        )
        return cls(
            collection=os.path.expanduser(settings.resolve("collection", collection)),
            api_key=settings.resolve("api_key", api_key) or None,
            write_key=settings.resolve("write_key", write_key) or None,
            max_upload_bytes=settings.resolve("max_upload_bytes", max_upload_bytes),
            cors_origins=origins,
            head_timeout=settings.resolve("head_timeout", head_timeout),
            body_timeout=settings.resolve("body_timeout", body_timeout),
            max_connections=settings.resolve("max_connections", max_connections),
            decode_memory_bytes=settings.resolve("decode_memory_bytes"),
            decode_wait=settings.resolve("decode_wait"), **rest,
        )

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        data = json.loads(os.environ[CONFIG_ENV])
        data["cors_origins"] = tuple(data["cors_origins"])
        data["consume_allow_paths"] = tuple(data["consume_allow_paths"])
        return cls(**data)
