"""Index specifications: a short, factory-style string that says which ANN structure to build.

``auto``   exact ``Flat`` while the collection is small, ``HNSW32`` once it passes 20,000 vectors.
``Flat``   exact inner-product search.
``HNSW<M>[,efConstruction=<n>]``  a Faiss HNSW graph with M links per node (default M=32,
           efConstruction=64).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidSpecError

AUTO_HNSW_THRESHOLD = 20_000
_HNSW = re.compile(r"^HNSW(\d+)?(?:,efConstruction=(\d+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index spec. ``kind`` is what gets built now; ``auto`` may change it as n grows."""

    text: str
    kind: str  # "flat" or "hnsw"
    m: int = 32
    ef_construction: int = 64
    auto: bool = False

    def for_size(self, n: int) -> IndexSpec:
        """The concrete spec to build for ``n`` vectors (only ``auto`` depends on n)."""
        if not self.auto:
            return self
        kind = "hnsw" if n >= AUTO_HNSW_THRESHOLD else "flat"
        return IndexSpec(self.text, kind, self.m, self.ef_construction)

    @property
    def describe(self) -> str:
        if self.kind == "flat":
            return "Flat"
        return f"HNSW{self.m},efConstruction={self.ef_construction}"


def parse_spec(text: str) -> IndexSpec:
    """Parse an index spec string; raises :class:`InvalidSpecError` naming the valid forms."""
    cleaned = text.strip().replace(" ", "")
    if cleaned.lower() == "auto":
        return IndexSpec("auto", "flat", auto=True)
    if cleaned.lower() == "flat":
        return IndexSpec("Flat", "flat")
    match = _HNSW.match(cleaned)
    if match:
        m = int(match.group(1) or 32)
        ef_construction = int(match.group(2) or 64)
        if not 4 <= m <= 256 or not 8 <= ef_construction <= 4096:
            raise InvalidSpecError(
                f"Index spec {text!r} is out of range: M must be 4-256 and efConstruction "
                "8-4096. Use 'auto', 'Flat', or 'HNSW<M>[,efConstruction=<n>]' (e.g. 'HNSW32')."
            )
        return IndexSpec(f"HNSW{m},efConstruction={ef_construction}", "hnsw", m, ef_construction)
    raise InvalidSpecError(
        f"Unknown index spec {text!r}. Use 'auto', 'Flat', or 'HNSW<M>[,efConstruction=<n>]' "
        "(e.g. 'HNSW32' or 'HNSW48,efConstruction=128')."
    )
