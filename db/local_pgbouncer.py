"""A PgBouncer process (Debian's `pgbouncer`, 1.18) in front of one PostgreSQL server, in
transaction pooling mode: for the tests and the benchmark, configured as an operator would.

Every database name is passed through to the server (`* =`), and every role logs in with its
own password: PgBouncer checks it against the role's SCRAM secret and reuses the client's
proof to log in to PostgreSQL. The secret comes either from the server at login (auth_query,
as the server's superuser, whose password alone is in the auth file: studios provisioned
later need nothing, but PgBouncer 1.18 runs the query over a connection of its own in each
database, one more server connection per studio; auth_dbname came in 1.19), or from the auth
file, written from pg_shadow by `sync_auth_file` (and reloaded). It listens
on 127.0.0.1 at a free port, with its unix socket, log and files in a folder of its own under
the system's temporary folder (as root it runs as the PostgreSQL OS user, who must reach
them; pytest's 0700 folders are out of its reach).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from db.pg_os_user import run_as_user

__all__ = ["LocalPgBouncer", "PgBouncerMissing", "pgbouncer_binary"]

START_ATTEMPTS = 3  # a free port can be taken between choosing it and PgBouncer binding it


class PgBouncerMissing(RuntimeError):
    """No pgbouncer binary (`apt-get install pgbouncer`; `python3 dev.py test` does it)."""


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _superuser_password(params: dict[str, str]) -> str:
    """The password of the server URL: given, or in the passfile it names; '' for none."""
    if params.get("password"):
        return params["password"]
    passfile = params.get("passfile")
    if passfile and Path(passfile).exists():
        for line in Path(passfile).read_text().splitlines():
            fields = line.split(":")
            if len(fields) == 5 and fields[3] in {"*", params.get("user", "postgres")}:
                return fields[4]
    return ""


class LocalPgBouncer:
    def __init__(
        self,
        server_url: str,
        *,
        pool_size: int = 1,
        max_client_conn: int = 2000,
        server_idle_timeout: int = 600,
        auth_query: bool = True,
    ) -> None:
        """`pool_size`: server connections per (database, role), the studio's; 1 makes every
        connection of a studio share one, which is what a session-state test wants."""
        self.server = {k: str(v) for k, v in conninfo_to_dict(server_url).items() if v is not None}
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.server_idle_timeout = server_idle_timeout
        self.auth_query = auth_query
        self._owner: tuple[int, int] | None = None
        self.port = 0
        self.dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The pooled URL a catalogue entry names: host and port, no database, no user."""
        return f"postgresql://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "" if self.dir is None else (self.dir / "pgbouncer.log").read_text(errors="replace")

    def start(self) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise PgBouncerMissing("pgbouncer is not installed (apt-get install pgbouncer)")
        self.dir = Path(tempfile.mkdtemp(prefix="studio-pgbouncer-"))
        user = run_as_user()
        entry = pwd.getpwnam(user) if user else None
        superuser = self.server.get("user") or "postgres"
        if entry is not None:  # PgBouncer refuses to run as root: it runs as `user`
            self._owner = (entry.pw_uid, entry.pw_gid)
            os.chown(self.dir, *self._owner)
        self._write_auth_file([(superuser, _superuser_password(self.server))])
        for _attempt in range(START_ATTEMPTS):
            self.port = _free_port()
            config = self.dir / "pgbouncer.ini"
            config.write_text(self._config(superuser))
            command = [binary, *(["-u", user] if user else []), str(config)]
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_listening(timeout=10):
                return
            self.stop()
        raise RuntimeError(f"pgbouncer did not start:\n{self.log}")

    def _config(self, superuser: str) -> str:
        assert self.dir is not None
        host = self.server.get("host") or "127.0.0.1"
        port = self.server.get("port") or "5432"
        return f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.dir}
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
pool_mode = transaction
auth_type = scram-sha-256
auth_file = {self.dir}/userlist.txt
{f"auth_user = {superuser}" if self.auth_query else ""}
default_pool_size = {self.pool_size}
max_client_conn = {self.max_client_conn}
server_idle_timeout = {self.server_idle_timeout}
"""

    def _write_auth_file(self, users: list[tuple[str, str]]) -> None:
        assert self.dir is not None
        auth_file = self.dir / "userlist.txt"
        partial = auth_file.with_name("userlist.partial")
        partial.write_text("".join(f'"{user}" "{secret}"\n' for user, secret in users))
        partial.chmod(0o600)
        if self._owner is not None:
            os.chown(partial, *self._owner)
        partial.replace(auth_file)

    def sync_auth_file(self, server_url: str) -> int:
        """Every login role's SCRAM secret from the server's pg_shadow into the auth file,
        then a reload (SIGHUP); how many roles. For auth_query=False."""
        with psycopg.connect(server_url) as conn:
            rows = conn.execute(
                "SELECT usename, passwd FROM pg_shadow WHERE passwd IS NOT NULL"
            ).fetchall()
        superuser = self.server.get("user") or "postgres"
        users = [(superuser, _superuser_password(self.server))]
        users += [(str(name), str(secret)) for name, secret in rows if name != superuser]
        self._write_auth_file(users)
        if self.process is not None:
            self.process.send_signal(signal.SIGHUP)
        return len(users)

    def _wait_listening(self, *, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                time.sleep(0.05)
                continue
            return True
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # PgBouncer's "shut down now"
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def destroy(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
