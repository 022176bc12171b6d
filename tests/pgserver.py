"""A real PostgreSQL server for the tests and the store benchmark.

``LOOKALIKE_TEST_POSTGRES_URL`` names an existing one (a superuser URI: schemas and a role are
made in it). Otherwise a throwaway cluster is initialised in a temporary folder and started on
loopback, on a free port, with its unix socket in that folder, from the server binaries Debian's
``postgresql`` package installs (``make test`` installs it with apt). initdb refuses to run as
root, so as root the cluster belongs to the ``postgres`` user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATABASE = "lookalike_test"
#: A login role that must give its password (scram-sha-256), for the password tests.
PASSWORD_ROLE, PASSWORD = "lookalike_pw", "s3cret/pass@word"


class CannotStart(Exception):
    """No PostgreSQL server could be started here (the message says why)."""


@dataclass
class PostgresServer:
    url: str  # a superuser, trusted without a password, on database DATABASE
    password_url: str | None  # PASSWORD_ROLE with its password; None on an existing server
    folder: Path | None = None  # the throwaway cluster's, removed by stop()
    bindir: Path | None = None
    owner: str | None = None

    def admin(self) -> Any:  # a psycopg connection, autocommit
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def fresh_schema(self) -> str:
        return f"t_{uuid.uuid4().hex[:12]}"

    def uri(self, schema: str, *, url: str | None = None) -> str:
        """``url`` (default: the superuser's) with ``?schema=``."""
        url = url or self.url
        return f"{url}{'&' if '?' in url else '?'}schema={schema}"

    def drop_schema(self, schema: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def stop(self) -> None:
        if self.folder is None or self.bindir is None:
            return
        subprocess.run(_as(self.owner, [str(self.bindir / "pg_ctl"), "-D",
                                        str(self.folder / "data"), "-m", "immediate", "stop"]),
                       capture_output=True, check=False, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0))
    return versions[-1].parent if versions else None


def start(*, durable: bool = False) -> PostgresServer:
    """Start a throwaway cluster (raises CannotStart). ``durable=False`` turns fsync off."""
    binaries = bindir()
    if binaries is None:
        raise CannotStart("no PostgreSQL server binaries (initdb, pg_ctl): install them with "
                          "`apt-get install postgresql` (make test does)")
    owner = None
    if os.geteuid() == 0:
        owner = "postgres"
        try:
            pwd.getpwnam(owner)
        except KeyError:
            raise CannotStart("running as root and there is no 'postgres' user to run initdb "
                              "as (Debian's postgresql package makes one)") from None
    try:
        import psycopg  # noqa: F401 - the tests' client
    except ImportError:
        raise CannotStart("psycopg is not installed: pip install 'lookalike[postgres]'") from None
    server = PostgresServer("", None, Path(tempfile.mkdtemp(prefix="lookalike-pg-")), binaries,
                            owner)
    try:
        _start(server, durable)
    except Exception as exc:
        server.stop()
        raise CannotStart(f"{type(exc).__name__}: {exc}") from None
    return server


def _start(server: PostgresServer, durable: bool) -> None:
    folder, binaries, owner = server.folder, server.bindir, server.owner
    assert folder is not None and binaries is not None
    if owner:
        shutil.chown(folder, owner)
    data, port = folder / "data", _free_port()
    _run(owner, [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync"])
    settings = {"listen_addresses": "'127.0.0.1'", "port": str(port),
                "unix_socket_directories": f"'{folder}'", "max_connections": "200"}
    if not durable:
        settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
    with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
    _run(owner, [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
                 "-w", "-t", "60", "start"])
    server.url = f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(PASSWORD_ROLE), sql.Literal(PASSWORD)))
        conn.execute(f"GRANT ALL ON DATABASE {DATABASE} TO {PASSWORD_ROLE}")
    server.password_url = f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{port}/{DATABASE}"


def connect_or_start() -> PostgresServer:
    """The server for a test session: LOOKALIKE_TEST_POSTGRES_URL's, else a throwaway one
    (raises CannotStart). Call ``stop()`` at the end."""
    given = os.environ.get("LOOKALIKE_TEST_POSTGRES_URL")
    return PostgresServer(given, None) if given else start()


def _run(owner: str | None, args: list[str]) -> None:
    done = subprocess.run(_as(owner, args), capture_output=True, text=True, timeout=120,
                          check=False, cwd="/")
    if done.returncode != 0:
        raise CannotStart(f"{Path(args[0]).name} failed: {(done.stderr or done.stdout).strip()}")


def _as(owner: str | None, args: list[str]) -> list[str]:
    return ["runuser", "-u", owner, "--", *args] if owner else args


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
