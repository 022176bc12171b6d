"""Phase 2 kept live: a collection's vector index, in step with its store."""

from .local import CompactionPolicy, CompactionReport, LiveIndex

__all__ = ["CompactionPolicy", "CompactionReport", "LiveIndex"]
