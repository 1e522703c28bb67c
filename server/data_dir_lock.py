"""One `studio serve` per data directory: a lock on `<data-dir>/serve.lock` holding its pid.

The kernel releases an flock when its process dies, kill -9 included, so a stale file never
locks anyone out; the pid in it only names the holder for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["DataDirInUse", "DataDirLock", "lock_data_dir"]

LOCK_FILE = "serve.lock"


class DataDirInUse(Exception):
    def __init__(self, data_dir: Path, pid: str) -> None:
        super().__init__(
            f"the data directory {data_dir} is in use by another studio serve (pid {pid or '?'})"
        )
        self.pid = pid


class DataDirLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        os.close(self._fd)


def lock_data_dir(data_dir: Path) -> DataDirLock:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise DataDirInUse(data_dir, holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return DataDirLock(fd)
