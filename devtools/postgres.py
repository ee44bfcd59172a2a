"""A local PostgreSQL server: its data directory, its command line and its database.

The cluster runner (`manage.py cluster up --db postgres`) and the tests' fixture start one the
same way: `initdb` once per data directory, then `postgres -D <dir> -p <port>` in the
foreground as a process of their own, on 127.0.0.1 only (no Unix socket), stopped by its PID
with its `stop_signal`. Passwords are made once per data directory and kept beside it,
readable by the runner's user only; the runner connects as the superuser `postgres` only to
make the application's role and database.

PostgreSQL refuses to run as root. Run by root, initdb and the server run as the `postgres`
system user (Debian's postgresql package makes it), which owns the data directory.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

# Debian keeps the server's programs off PATH, in one directory per major version.
DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
SUPERUSER = "postgres"
# The runner's commits may be lost on a crash of the machine, never half-applied: like the
# SQLite database's synchronous=NORMAL, and a commit does not wait for the disk.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "synchronous_commit": "off",
}


class PostgresError(RuntimeError):
    """PostgreSQL could not be found, set up or reached; the message says what to do."""


def bin_dir() -> Path | None:
    """Where initdb and postgres are: beside initdb on PATH, or Debian's newest version's."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).resolve().parent
    versions = [
        path
        for path in DEBIAN_BIN_DIRS.glob("*/bin")
        if path.parent.name.isdigit() and (path / "initdb").exists()
    ]
    if not versions:
        return None
    return max(versions, key=lambda path: int(path.parent.name))


def _program(name: str) -> str:
    found = bin_dir()
    if found is None:
        raise PostgresError(
            "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
            "apt-get install postgresql, or `make test` installs it"
        )
    return str(found / name)


def _server_user() -> pwd.struct_passwd | None:
    """The user initdb and the server run as: None for the runner's own, unless that is root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no {SERVER_USER!r} user to run it "
            "as: install Debian's postgresql package (it makes one), or run as another user"
        ) from None


def _as_server_user() -> list[str]:
    """The command prefix that runs a PostgreSQL program as the server's user."""
    user = _server_user()
    if user is None:
        return []
    # The data directory sits in the runner's var/ (or a test's tmp dir), private to root, which
    # the postgres user may not pass through; read-and-search access everywhere (no writes) is
    # what lets it reach its own directory there.
    return [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
    ]  # fmt: skip


class LocalPostgres:
    """One server: `<base_dir>/data` is its data directory, `<base_dir>/credentials.json` its
    passwords; `database` belongs to the login role `user`, which may create databases (a test
    run makes its own)."""

    # SIGINT is PostgreSQL's "fast" shutdown: open sessions are ended and the server stops at
    # once, cleanly. SIGTERM ("smart") would wait for every client to disconnect, pooled ones too.
    stop_signal = signal.SIGINT

    def __init__(
        self, base_dir: Path, port: int, *, database: str = "switchboard", user: str = "switchboard"
    ) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.port = port
        self.database = database
        self.user = user
        base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._credentials = self._load_credentials()

    def _load_credentials(self) -> dict[str, str]:
        path = self.base_dir / "credentials.json"
        if path.exists():
            credentials: dict[str, str] = json.loads(path.read_text())
            return credentials
        credentials = {
            "superuser_password": secrets.token_urlsafe(24),
            "password": secrets.token_urlsafe(24),
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(credentials, file)
        return credentials

    @property
    def url(self) -> str:
        """DATABASE_URL for the application's role and database."""
        password = quote(self._credentials["password"], safe="")
        return f"postgres://{self.user}:{password}@127.0.0.1:{self.port}/{self.database}"

    # --- the server ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the data directory with initdb, unless it holds a database system already."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        user = _server_user()
        if user is not None:
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        argv = [
            *_as_server_user(), _program("initdb"), "-D", str(self.data_dir),
            "-U", SUPERUSER, "--pwfile=/dev/stdin", "--auth=scram-sha-256",
            # Byte order (C), as SQLite compares text: the same results from both databases.
            "--encoding=UTF8", "--locale=C",
            # A new, empty database system: an OS crash right now loses nothing worth keeping.
            "--no-sync",
        ]  # fmt: skip
        done = subprocess.run(
            argv,
            input=self._credentials["superuser_password"] + "\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise PostgresError(f"initdb failed for {self.data_dir}:\n{done.stdout}{done.stderr}")

    def server_argv(self) -> list[str]:
        """The server in the foreground: its PID is the one to signal."""
        argv = [*_as_server_user(), _program("postgres"), "-D", str(self.data_dir)]
        argv += ["-p", str(self.port)]
        for name, value in SERVER_SETTINGS.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def ready(self) -> bool:
        """True once the server accepts the superuser's connections."""
        try:
            with self._superuser_connection():
                return True
        except psycopg.OperationalError:
            return False

    def _superuser_connection(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="postgres",
            user=SUPERUSER,
            password=self._credentials["superuser_password"],
            connect_timeout=2,
            autocommit=True,
        )

    def create_database(self) -> None:
        """The application's role and database, where they are missing (the role's password is
        set again either way, so it matches credentials.json)."""
        password = sql.Literal(self._credentials["password"])
        role = sql.Identifier(self.user)
        with self._superuser_connection() as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [self.user]
            ).fetchone()
            verb = sql.SQL("ALTER" if exists else "CREATE")
            connection.execute(
                sql.SQL("{} ROLE {} LOGIN CREATEDB PASSWORD {}").format(verb, role, password)
            )
            if not connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [self.database]
            ).fetchone():
                connection.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.database), role
                    )
                )
