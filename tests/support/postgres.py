"""A throwaway PostgreSQL server for the tests: Debian's PostgreSQL 15 in a temporary folder, on a free
loopback port, with durability off (fsync, synchronous commit) because its data dies with the run.

``scripts/test.sh`` starts one for the whole run (``python -m tests.support.postgres start DIR`` prints its
URL) and hands it to pytest in ``PEP_TEST_POSTGRES_URL``; a test run without it starts its own in the
``postgres_server`` fixture. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user. Each test gets its own database (tests/conftest.py's ``_database``), dropped afterwards:
a copy of a template database migrated once per process (``create_template``), or an empty one.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from contextlib import closing
from pathlib import Path

BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _bin(name: str) -> str:
    for folder in BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PostgresServer:
    def __init__(self, folder: Path, listen: tuple[str, ...] = ("127.0.0.1",), clients: tuple[str, ...] = ()) -> None:
        """``listen``: the addresses it accepts connections on; ``clients``: networks (CIDR) besides loopback
        whose connections it trusts (tests/support/hosts.py: the network namespaces' links)."""
        self.folder = Path(folder)
        self.data = self.folder / "data"
        self.port = 0
        self.listen = listen
        self.clients = clients

    def url_on(self, address: str) -> str:
        return f"postgresql+psycopg://postgres@{address}:{self.port}/postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        subprocess.run([*_as_server_user(), _bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        if self.clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in self.clients)
        self.port = _free_port()
        options = (f"-p {self.port} -h {','.join(self.listen)} -k {self.folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400 -c shared_buffers=128MB")
        subprocess.run([*_as_server_user(), _bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                        "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True)
        return self

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*_as_server_user(), _bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                            "stop"], capture_output=True)


def database_url(server_url: str, name: str) -> str:
    return server_url.rsplit("/", 1)[0] + "/" + name


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    dsn = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(server_url: str, template: str | None = None) -> tuple[str, str]:
    """A new database on the server at ``server_url``: (its URL, its name). Empty, or a copy of the
    database named ``template`` (which must have no open connection)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return database_url(server_url, name), name


def create_template(server_url: str) -> str:
    """A new database migrated to the newest revision, to copy tests' databases from: its name. The
    platform migrates it in a subprocess, so nothing of that app (its engine, its logging) stays here."""
    url, name = create_database(server_url)
    code = "from backend.app import create_app; create_app()"
    folder = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="pep-template-") as logs:
        env = {**os.environ, "DATABASE_URL": url, "ENVIRONMENT": "test", "PEP_LOGGING__DIR": logs}
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=120)
    if done.returncode != 0:
        drop_database(server_url, name)
        raise RuntimeError(f"migrating the template database failed:\n{done.stderr[-3000:]}")
    return name


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print("usage: python -m tests.support.postgres start|stop FOLDER", file=sys.stderr)
        return 2
    server = PostgresServer(Path(argv[2]))
    if argv[1] == "stop":
        server.stop()
        return 0
    server.start()
    print(server.url)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
