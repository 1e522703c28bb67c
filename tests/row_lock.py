"""An application transaction that holds a row locked, so that calls touching it wait."""

from __future__ import annotations

import threading

import psycopg
from psycopg import sql

__all__ = ["RowLock", "lock_waiters"]


def lock_waiters(url: str) -> int:
    """How many statements in this database are waiting for a lock right now."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


class RowLock:
    """`with RowLock(url, id) as lock:` holds the row FOR UPDATE until `lock.release()`
    (or the end of the block), from a thread of its own; `table=` locks a row of another."""

    def __init__(self, url: str, row_id: int, *, table: str = "sessions") -> None:
        self.url, self.row_id, self.table = url, row_id, table
        self._locked, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        with psycopg.connect(self.url) as conn:
            conn.execute(
                sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR UPDATE").format(
                    sql.Identifier(self.table)
                ),
                (self.row_id,),
            )
            self._locked.set()
            self._release.wait(30)

    def __enter__(self) -> RowLock:
        self._thread.start()
        assert self._locked.wait(10), "the row was not locked"
        return self

    def release(self) -> None:
        self._release.set()

    def __exit__(self, *_exc: object) -> None:
        self.release()
        self._thread.join()
