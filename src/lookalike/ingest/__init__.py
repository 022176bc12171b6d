"""Engines and sources that feed a collection: local worker processes, Ray."""

from .local import BatchSource, Ingestor, exists, walk

__all__ = ["BatchSource", "Ingestor", "exists", "walk"]
