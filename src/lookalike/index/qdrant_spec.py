"""Qdrant index specs: where a Qdrant collection lives, and how Qdrant indexes it.

``qdrant://HOST[:PORT]/NAME[?PARAMS]``  a collection on a Qdrant server, over its REST API (port
        6333 unless given). ``LOOKALIKE_QDRANT_API_KEY`` carries the API key; it is never
        recorded. With a key the connection is HTTPS, as qdrant-client makes it, unless
        ``https=false`` says otherwise.
``qdrant-edge[:[DIR/]NAME][?PARAMS]``  Qdrant Edge, Qdrant's engine in this process (the
        ``qdrant`` extra): one shard in the folder ``DIR/NAME`` (default ``qdrant/lookalike``;
        a relative path is inside the collection folder, so the folder stays self-contained).
        Qdrant Edge serves one process at a time.

``PARAMS`` use Qdrant's own names: ``index=hnsw&m=32&ef_construct=128`` (the default),
``index=exact`` (no graph: every search compares with every vector), and ``indexing_threshold``
(kilobytes of vectors a segment holds before Qdrant builds its graph and searches through it;
Qdrant's default, 10,000, unless given). The metric is always the dot product on unit vectors
(= cosine). Searches pass ``ef`` (from ``ef_search``) per call as ``hnsw_ef``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypedDict

from ..errors import InvalidSpecError
from .milvus_spec import bracket, index_numbers, query_params, split_server

if TYPE_CHECKING:
    from .spec import IndexSpec

DEFAULT_PORT = 6333
DEFAULT_EDGE_DIR = "qdrant"
DEFAULT_NAME = "lookalike"
DEFAULT_INDEXING_THRESHOLD = 10_000  # KB: Qdrant's default
QDRANT_FORMS = ("'qdrant://HOST[:PORT]/NAME[?m=32&ef_construct=128]' or "
                "'qdrant-edge:[DIR/]NAME[?index=exact]'")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
#: Index types, and the parameters each takes.
_PARAMS = {"hnsw": ("m", "ef_construct", "indexing_threshold"), "exact": ()}
_EDGE = "qdrant-edge"
_HNSW_RANGES = "m must be 4-256 and ef_construct 8-4096"
_RANGES = {"m": (4, 256, _HNSW_RANGES), "ef_construct": (8, 4096, _HNSW_RANGES),
           "indexing_threshold": (1, 2**31 - 1, "indexing_threshold must be 1 KB or more")}
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class QdrantSpec:
    """Where the vectors live and how Qdrant indexes them (m and ef_construct are on the
    IndexSpec)."""

    name: str  # the Qdrant collection (a server's) or the shard's folder name (Qdrant Edge's)
    index_type: str  # "hnsw" or "exact"
    edge_dir: str | None = None  # Qdrant Edge's folder of shards (relative: to the collection)
    host: str = ""  # a Qdrant server's host (empty for Qdrant Edge)
    port: int = DEFAULT_PORT
    https: bool | None = None  # None: HTTPS exactly when an API key is given
    indexing_threshold: int | None = None  # KB; None: Qdrant's default

    @property
    def is_edge(self) -> bool:
        return self.edge_dir is not None

    @property
    def where(self) -> str:
        """The location part of the spec, for messages."""
        if self.edge_dir is not None:
            return f"{_EDGE}:{self.edge_dir}/{self.name}"
        return f"qdrant://{bracket(self.host)}:{self.port}/{self.name}"

    def canonical(self, spec: IndexSpec) -> str:
        """The whole spec, every parameter spelled out."""
        https = "" if self.https is None else f"&https={str(self.https).lower()}"
        return f"{self.where}?{self.params_text(spec)}{https}"

    def params_text(self, spec: IndexSpec) -> str:
        """The index parameters, as the Qdrant collection records them."""
        if self.index_type == "exact":
            return "index=exact"
        threshold = ("" if self.indexing_threshold is None
                     else f"&indexing_threshold={self.indexing_threshold}")
        return f"index=hnsw&m={spec.m}&ef_construct={spec.ef_construction}{threshold}"

    @property
    def threshold(self) -> int:
        """KB of vectors from which a segment gets a graph (Qdrant's ``indexing_threshold``) and
        is searched through it (its ``full_scan_threshold``, kept equal: a segment below it is
        searched exhaustively)."""
        return self.indexing_threshold or DEFAULT_INDEXING_THRESHOLD


def is_qdrant_spec(text: str) -> bool:
    lowered = text.strip().lower()
    return lowered.startswith(("qdrant://", f"{_EDGE}:")) or lowered == _EDGE


def parse_qdrant_spec(text: str) -> IndexSpec:
    """Parse a ``qdrant://`` or ``qdrant-edge:`` spec (see the module docstring)."""
    from .spec import DEFAULT_EF_CONSTRUCTION, IndexSpec

    location, _, query = text.strip().partition("?")
    if location.lower().startswith("qdrant://"):
        target = _server(text, location)
    else:
        target = _edge(text, location[len(_EDGE):].removeprefix(":"))
    params = _query(text, query)
    https = params.pop("https", None)
    if https is not None:
        if "host" not in target:
            raise _error(text, "https is a Qdrant server's setting, not Qdrant Edge's")
        if https.lower() not in _BOOLEANS:
            raise _error(text, f"https must be true or false, not {https!r}")
        target["https"] = _BOOLEANS[https.lower()]
    index_type = params.pop("index", "hnsw").lower()
    try:
        numbers = index_numbers(params, index_type, _PARAMS,
                                {"m": 32, "ef_construct": DEFAULT_EF_CONSTRUCTION}, _RANGES)
    except ValueError as exc:
        raise _error(text, str(exc)) from None
    if "indexing_threshold" in numbers:
        target["indexing_threshold"] = numbers["indexing_threshold"]
    qdrant = QdrantSpec(index_type=index_type, **target)
    spec = IndexSpec("", "qdrant", numbers["m"], numbers["ef_construct"], qdrant=qdrant)
    return replace(spec, text=qdrant.canonical(spec))


class _Name(TypedDict):
    name: str


class _Target(_Name, total=False):
    """QdrantSpec's location fields, as parsed from the spec text."""

    edge_dir: str
    host: str
    port: int
    https: bool
    indexing_threshold: int


def _server(text: str, location: str) -> _Target:
    try:
        host, port, path = split_server(location, DEFAULT_PORT,
                                        credentials="LOOKALIKE_QDRANT_API_KEY (the API key)",
                                        example="qdrant://localhost:6333/name")
    except ValueError as exc:
        raise _error(text, str(exc)) from None
    if len(path) != 1:
        raise _error(text, "name the collection, and only it: qdrant://HOST:PORT/NAME")
    _check_name(text, path[0])
    return {"name": path[0], "host": host, "port": port}


def _edge(text: str, rest: str) -> _Target:
    folder, _, name = rest.rpartition("/")
    name = name or DEFAULT_NAME
    _check_name(text, name)
    return {"name": name, "edge_dir": folder or DEFAULT_EDGE_DIR}


def _query(text: str, query: str) -> dict[str, str]:
    def canonical(key: str) -> str:
        normal = key.lower().replace("-", "_")
        return {"efconstruct": "ef_construct", "ef_construction": "ef_construct",
                "index_type": "index"}.get(normal, normal)

    try:
        return query_params(query, canonical)
    except ValueError as exc:
        raise _error(text, str(exc)) from None


def _check_name(text: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise _error(text, f"{name!r} is not a Qdrant collection name: use letters, digits, "
                           "'_', '-' and '.', not starting with '-' or '.'")


def _error(text: str, why: str) -> InvalidSpecError:
    return InvalidSpecError(f"Invalid Qdrant index spec {text!r}: {why}. Use {QDRANT_FORMS}.")
