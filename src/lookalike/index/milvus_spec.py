"""Milvus index specs: where a Milvus collection lives, and which Milvus index it builds.

``milvus://HOST[:PORT]/[DATABASE/]NAME[?PARAMS]``  a collection on a Milvus server (port 19530
        unless given; the default database unless given). ``LOOKALIKE_MILVUS_TOKEN`` carries
        ``user:password`` or an API key; it is never recorded.
``milvus-lite[:[FILE.db/]NAME][?PARAMS]``  the embedded Milvus Lite (the ``milvus`` extra), its
        data in ``FILE.db`` (default ``milvus.db``; a relative path is inside the collection
        folder, so the folder stays self-contained) under collection ``NAME`` (default
        ``lookalike``). Milvus Lite serves one process at a time.

``PARAMS`` pick the index, with Milvus's own names: ``index=HNSW&M=32&efConstruction=64`` (the
default), ``index=IVF_FLAT&nlist=1024`` or ``index=FLAT`` (exact). The metric is always inner
product on unit vectors. Searches pass ``ef`` (from ``ef_search``) or ``nprobe`` per call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import parse_qsl, urlsplit

from ..errors import InvalidSpecError

if TYPE_CHECKING:
    from .spec import IndexSpec

DEFAULT_PORT = 19530
DEFAULT_LITE_FILE = "milvus.db"
DEFAULT_NAME = "lookalike"
MILVUS_FORMS = ("'milvus://HOST[:PORT]/[DATABASE/]NAME[?index=HNSW&M=32&efConstruction=64]' or "
                "'milvus-lite:[FILE.db/]NAME[?index=IVF_FLAT&nlist=1024]'")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
#: Index types, and the parameters each takes.
_PARAMS = {"HNSW": ("M", "efConstruction"), "IVF_FLAT": ("nlist",), "FLAT": ()}
_LITE = ("milvus-lite:", "milvus-lite")


@dataclass(frozen=True)
class MilvusSpec:
    """Where the vectors live and how Milvus indexes them (the numbers are on the IndexSpec)."""

    name: str  # the Milvus collection
    index_type: str  # "HNSW", "IVF_FLAT" or "FLAT"
    lite_file: str | None = None  # Milvus Lite's data file (relative: to the collection folder)
    host: str = ""  # a Milvus server's host (empty for Milvus Lite)
    port: int = DEFAULT_PORT
    database: str = ""  # "" is the server's default database

    @property
    def is_lite(self) -> bool:
        return self.lite_file is not None

    @property
    def where(self) -> str:
        """The location part of the spec, for messages."""
        if self.lite_file is not None:
            return f"milvus-lite:{self.lite_file}/{self.name}"
        database = f"{self.database}/" if self.database else ""
        return f"milvus://{bracket(self.host)}:{self.port}/{database}{self.name}"

    def canonical(self, spec: IndexSpec) -> str:
        """The whole spec, every parameter spelled out."""
        return f"{self.where}?{self.params_text(spec)}"

    def params_text(self, spec: IndexSpec) -> str:
        if self.index_type == "HNSW":
            return f"index=HNSW&M={spec.m}&efConstruction={spec.ef_construction}"
        if self.index_type == "IVF_FLAT":
            return f"index=IVF_FLAT&nlist={spec.nlist}"
        return "index=FLAT"

    def build_params(self, spec: IndexSpec) -> dict[str, int]:
        """The index parameters Milvus is given."""
        if self.index_type == "HNSW":
            return {"M": spec.m, "efConstruction": spec.ef_construction}
        if self.index_type == "IVF_FLAT":
            return {"nlist": spec.nlist}
        return {}


def is_milvus_spec(text: str) -> bool:
    lowered = text.strip().lower()
    return lowered.startswith(("milvus://", "milvus-lite:")) or lowered == "milvus-lite"


def parse_milvus_spec(text: str) -> IndexSpec:
    """Parse a ``milvus://`` or ``milvus-lite:`` spec (see the module docstring)."""
    from .spec import _RANGES, IndexSpec

    stripped = text.strip()
    location, _, query = stripped.partition("?")
    if location.lower().startswith("milvus://"):
        target = _server(text, location)
    else:
        target = _lite(text, location[len(_LITE[1]):].removeprefix(":"))
    params = _query(text, query)
    index_type = params.pop("index", "HNSW").upper()
    try:
        numbers = index_numbers(params, index_type, _PARAMS,
                                {"M": 32, "efConstruction": 64, "nlist": 1024}, _RANGES)
    except ValueError as exc:
        raise _error(text, str(exc)) from None
    milvus = MilvusSpec(index_type=index_type, **target)
    spec = IndexSpec("", "milvus", numbers["M"], numbers["efConstruction"],
                     nlist=numbers["nlist"] if index_type == "IVF_FLAT" else 0, milvus=milvus)
    return replace(spec, text=milvus.canonical(spec))


class _Name(TypedDict):
    name: str


class _Target(_Name, total=False):
    """MilvusSpec's location fields, as parsed from the spec text."""

    lite_file: str
    host: str
    port: int
    database: str


def _server(text: str, location: str) -> _Target:
    try:
        host, port, path = split_server(
            location, DEFAULT_PORT, credentials="LOOKALIKE_MILVUS_TOKEN (user:password or an "
            "API key)", example="milvus://localhost:19530/name")
    except ValueError as exc:
        raise _error(text, str(exc)) from None
    if not 1 <= len(path) <= 2:
        raise _error(text, "name the collection (and optionally the database first): "
                           "milvus://HOST:PORT/NAME or milvus://HOST:PORT/DATABASE/NAME")
    *database, name = path
    for part in path:
        _check_name(text, part)
    return {"name": name, "host": host, "port": port, "database": database[0] if database else ""}


def _lite(text: str, rest: str) -> _Target:
    if not rest:
        return {"name": DEFAULT_NAME, "lite_file": DEFAULT_LITE_FILE}
    if rest.endswith(".db"):
        return {"name": DEFAULT_NAME, "lite_file": rest}
    file, _, name = rest.rpartition("/")
    if file and not file.endswith(".db"):
        raise _error(text, "a Milvus Lite data file's name ends in .db: "
                           "milvus-lite:FILE.db/NAME")
    _check_name(text, name)
    return {"name": name, "lite_file": file or DEFAULT_LITE_FILE}


def _query(text: str, query: str) -> dict[str, str]:
    def canonical(key: str) -> str:
        return {"m": "M", "efconstruction": "efConstruction", "nlist": "nlist",
                "index": "index", "index_type": "index"}.get(key.lower(), key)

    try:
        return query_params(query, canonical)
    except ValueError as exc:
        raise _error(text, str(exc)) from None


def _check_name(text: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise _error(text, f"{name!r} is not a Milvus name: use letters, digits and "
                           "underscores, starting with a letter or underscore")


def query_params(query: str, canonical: Callable[[str], str]) -> dict[str, str]:
    """A spec's ``?key=value&...`` by ``canonical(key)``; a ValueError for a key given twice."""
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        name = canonical(key)
        if name in params:
            raise ValueError(f"{name} is given twice")
        params[name] = value.strip()
    return params


def index_numbers(params: dict[str, str], index_type: str,
                  takes: Mapping[str, tuple[str, ...]], defaults: dict[str, int],
                  ranges: Mapping[str, tuple[int, int, str]]) -> dict[str, int]:
    """A database spec's index parameters as numbers, ``defaults`` for those not given; a
    ValueError says what is wrong: an ``index_type`` not in ``takes`` (index type -> the
    parameters it takes), a parameter it does not take, one that is not a whole number, or one
    out of its ``ranges`` entry (lowest, highest, what the error says)."""
    if index_type not in takes:
        raise ValueError(f"index must be one of {', '.join(takes)}, not {index_type!r}")
    allowed = takes[index_type]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        wanted = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
        raise ValueError(f"index={index_type} {wanted}, not {', '.join(unknown)}")
    numbers = dict(defaults)
    for key, raw in params.items():
        if not raw.isdigit():
            raise ValueError(f"{key} must be a whole number, not {raw!r}")
        numbers[key] = int(raw)
    for key, number in numbers.items():
        low, high, message = ranges[key]
        if not low <= number <= high:
            raise ValueError(message)
    return numbers


def split_server(location: str, default_port: int, *, credentials: str,
                 example: str) -> tuple[str, int, list[str]]:
    """(host, port, path parts) of a server spec's ``SCHEME://HOST[:PORT]/PATH``; a ValueError
    says what is wrong. Credentials belong in the environment variable ``credentials``."""
    parts = urlsplit(location)
    if parts.username or parts.password:
        raise ValueError(f"put credentials in {credentials}, not in the spec, which the "
                         "manifest records")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"a server spec needs a host, e.g. {example}")
    return parts.hostname, port, [p for p in parts.path.split("/") if p]


def bracket(host: str) -> str:
    """A host as a URI writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _error(text: str, why: str) -> InvalidSpecError:
    return InvalidSpecError(f"Invalid Milvus index spec {text!r}: {why}. Use {MILVUS_FORMS}.")
