"""The OS user the embedded PostgreSQL runs as, and what it can reach.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` OS user when there is
one, else as a system user `studio-pg` created on first use. That user may be unable to reach
a folder (anything under /root, pytest's 0700 tmp_path): rather than loosen the permissions of
any parent folder, what it must reach is kept under /var/lib/studio-pg.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
from pathlib import Path

__all__ = [
    "RELOCATED_HOME",
    "path_key",
    "reachable_by",
    "reachable_copy_of_binaries",
    "run_as_user",
]

RUN_AS_FALLBACK_USER = "studio-pg"
RELOCATED_HOME = Path("/var/lib/studio-pg")


def run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", RUN_AS_FALLBACK_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            RUN_AS_FALLBACK_USER,
        ],
        check=True,
    )
    return RUN_AS_FALLBACK_USER


def reachable_by(user: str, path: Path) -> bool:
    """Whether `user` may traverse every existing folder from / down to `path` (folders
    still to be made are made by us, with the default mode)."""
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    for folder in [path, *path.parents]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == entry.pw_uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid in groups:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return False
    return True


def path_key(path: Path) -> str:
    """A short stable name for a path, for the folder that stands in for it."""
    return hashlib.sha256(str(path).encode()).hexdigest()[:16]


def reachable_copy_of_binaries(bin_dir: Path) -> Path:
    """A copy of the installation where the run-as user can reach it, made once. The
    wheel's binaries find their libraries at $ORIGIN/../../../<package>.libs: the copy
    keeps that layout."""
    install = bin_dir.parent
    package = install.parent
    copy = RELOCATED_HOME / f"pginstall-{path_key(install)}"
    copied = copy / package.name / install.name / "bin"
    if not (copied / "postgres").exists():
        partial = copy.with_name(f"{copy.name}.partial-{os.getpid()}")
        for part in ("bin", "lib", "share"):
            target = partial / package.name / install.name / part
            shutil.copytree(install / part, target, symlinks=True)
        for libs in package.parent.glob(f"{package.name}.libs"):
            shutil.copytree(libs, partial / libs.name, symlinks=True)
        try:
            partial.rename(copy)
        except OSError:  # another process made it first
            shutil.rmtree(partial, ignore_errors=True)
    return copied
