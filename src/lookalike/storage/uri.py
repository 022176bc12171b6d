"""Store URIs: which metadata store a collection uses, as recorded in its manifest.

``sqlite`` is the embedded default (``lookalike.db`` in the collection folder). A PostgreSQL
store is a libpq URI, ``postgresql://user[:password]@host[:port]/db[?schema=name&sslmode=...]``:
every query parameter but ``schema`` goes to libpq unchanged. Several collections can share one
database, each in its own PostgreSQL schema: ``?schema=`` names it, otherwise a new collection
gets one derived from its folder name plus a random suffix. The manifest records the URI with
the schema filled in and the password left out.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from ..errors import UsageError

SQLITE = "sqlite"
SCHEMES = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def is_postgres(uri: str | None) -> bool:
    return uri is not None and uri.split(":", 1)[0].lower() in SCHEMES


@dataclass(frozen=True)
class PostgresURI:
    """A parsed ``postgresql://`` URI; :meth:`recorded` is what the manifest may hold."""

    user: str
    password: str | None
    hosts: str  # libpq's host[:port][,host[:port]...]; empty: the local socket
    dbname: str
    params: tuple[tuple[str, str], ...] = field(default=())
    schema: str | None = None

    @classmethod
    def parse(cls, text: str) -> PostgresURI:
        parts = urlsplit(text)
        if parts.scheme.lower() not in SCHEMES or parts.fragment:
            raise UsageError(
                f"Invalid store {redact(text)!r}: expected sqlite or "
                "postgresql://user[:password]@host[:port]/database[?schema=name]."
            )
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        params, schema = [], None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "schema":
                schema = value
            elif key == "password":
                password = value
            else:
                params.append((key, value))
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise UsageError(
                f"Invalid schema name {schema!r} in store URI: use lower-case letters, digits "
                "and underscores, starting with a letter or underscore (at most 63)."
            )
        return cls(unquote(user), unquote(password) if password else None, hosts,
                   unquote(parts.path.lstrip("/")), tuple(params), schema)

    def with_schema(self, schema: str) -> PostgresURI:
        return replace(self, schema=schema)

    def recorded(self) -> str:
        """The URI without its password: safe to write into a manifest or a log."""
        return self._format(password=False, schema=True)

    def conninfo(self) -> str:
        """The URI libpq connects with: the password kept, ``schema`` (ours) taken out."""
        return self._format(password=True, schema=False)

    def where(self) -> str:
        """host:port/database, for messages."""
        hosts = self.hosts or dict(self.params).get("host") or "the local socket"
        return f"{hosts}/{self.dbname}" if self.dbname else hosts

    def same_server(self, other: PostgresURI) -> bool:
        """Whether both name the same server, database and user (a password may differ)."""
        return (self.hosts, self.dbname, self.user) == (other.hosts, other.dbname, other.user)

    def _format(self, *, password: bool, schema: bool) -> str:
        userinfo = quote(self.user, safe="")
        if password and self.password:
            userinfo += ":" + quote(self.password, safe="")
        params = list(self.params)
        if schema and self.schema:
            params.append(("schema", self.schema))
        query = "?" + urlencode(params) if params else ""
        at = userinfo + "@" if userinfo else ""
        return f"postgresql://{at}{self.hosts}/{quote(self.dbname, safe='')}{query}"


def new_schema_name(folder: Path) -> str:
    """A schema for a new collection: its folder's name, made safe, plus a random suffix so two
    collections with the same folder name never share one."""
    stem = re.sub(r"[^a-z0-9_]+", "_", folder.name.lower()).strip("_")[:30] or "collection"
    return f"lookalike_{stem}_{uuid.uuid4().hex[:8]}"


def connection_uri(recorded: str, given: str | None, setting: str | None) -> PostgresURI:
    """The URI to open a PostgreSQL collection with.

    ``recorded`` is the manifest's URI. An explicitly ``given`` URI wins (the database moved, or
    it carries the password), taking the recorded schema unless it names one. The ``setting``
    (``LOOKALIKE_STORE``, a default for new collections) only lends its password, and only when
    it names the same server, database and user. Otherwise libpq finds the password itself
    (``PGPASSWORD``, ``~/.pgpass``, ``PGSERVICEFILE``).
    """
    uri = PostgresURI.parse(recorded)
    if given is not None:
        if not is_postgres(given):
            raise UsageError(
                f"This collection keeps its metadata in PostgreSQL ({uri.recorded()}); "
                f"--store {given!r} cannot move it. Pass a postgresql:// URI, or none."
            )
        override = PostgresURI.parse(given)
        return override if override.schema else override.with_schema(uri.schema or "")
    if setting and is_postgres(setting):
        fallback = PostgresURI.parse(setting)
        if fallback.password and fallback.same_server(uri):
            return replace(uri, password=fallback.password)
    return uri


def redact(text: str) -> str:
    """``text`` with any password in it replaced by ***."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", text)
