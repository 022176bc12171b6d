"""Engines and sources that feed a collection: local worker processes, Ray."""

from .local import BatchSource, Ingestor, decode_pool, exists, walk

__all__ = ["BatchSource", "Ingestor", "decode_pool", "exists", "walk"]
