"""The façade over a collection folder: :class:`Collection`."""

from .collection import Collection

__all__ = ["Collection"]
