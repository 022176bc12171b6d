"""What every client of a vector database (Milvus, a Qdrant server, Qdrant Edge) shares."""

from __future__ import annotations

from typing import Any

from .spec import IndexSpec


class DatabaseClient:
    """A client for one collection a spec names: the index parameters it builds, and the
    dimension the collection holds (asked of the database once, on first use)."""

    spec: IndexSpec
    target: Any  # the spec's MilvusTarget or QdrantTarget
    _dim: int | None

    def state(self) -> Any:
        """The collection as the database describes it (it has at least ``dim``)."""
        raise NotImplementedError

    @property
    def index_text(self) -> str:
        """The index parameters this spec builds, as the database records them."""
        return str(self.target.params_text(self.spec))

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.state().dim)
        return self._dim
