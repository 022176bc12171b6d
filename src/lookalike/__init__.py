"""lookalike: find more images that look like this one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .collection import Collection
    from .errors import LookalikeError
    from .types import CollectionInfo, FailedFile, IngestReport, SearchHit

__all__ = ["Collection", "CollectionInfo", "FailedFile", "IngestReport", "LookalikeError",
           "SearchHit"]
__version__ = "0.1.0"

_LAZY = {"Collection": "collection", "LookalikeError": "errors", "CollectionInfo": "types",
         "FailedFile": "types", "IngestReport": "types", "SearchHit": "types"}


def __getattr__(name: str) -> Any:
    # Lazy, so `lookalike --help` does not pay for numpy and friends.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lookalike' has no attribute {name!r}")
