"""Moving a studio's database to another PostgreSQL server (`studio tenants move`).

The steps, each recorded in the master (db/tenant_move_state.py) once done:

    check   the target answers, the name is free there, tools fit both servers' versions;
            then (before the hold, so it adds nothing to the pause) an empty database there,
            owned by the studio's role, made with the password the catalogue holds
    hold    the source database turns read-only (ALTER DATABASE ... SET
            default_transaction_read_only) and its sessions are ended, so every session
            from now on refuses writes: callers get UNAVAILABLE TENANT_MOVING with a retry
            hint, and retry (with their request ids) until the copy serves them
    copy    pg_dump | pg_restore (db/database_copy.py), the restored objects handed to the role
    verify  row counts of every table and the migration history's checksum, both sides;
            the role logs in to the copy
    switch  the catalogue names the target (one master transaction): the pause ends here
    close   the source refuses connections, so a server still holding the old place fails
            over to the catalogue at once instead of reading a stale copy

Writes are held from `hold` to `switch`, bounded by max_pause: a copy that takes longer is
stopped. Any failure before the switch gives the source its writes back and leaves the
catalogue as it was: the studio is served where it was, and running the move again starts
over from the hold (the copy is made anew, the old one dropped). A move interrupted while
holding stays held until it is run again (or aborted). After the switch nothing goes back:
the source stays read-only and closed until `drop_source`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql

from db.copy_verification import differences, fingerprint, history_checksum
from db.database_copy import copy_data, copy_schema
from db.pg_client_tools import PgTools, tools_for
from db.tenant_catalog import (
    TenantLocation,
    admin_conninfo,
    list_tenants,
    server_of,
    tenant_conninfo,
    with_database,
)
from db.tenant_move_state import (
    MoveRecord,
    after,
    read_move,
    record_failure,
    record_step,
    retarget_move,
    start_move,
    switch_catalogue,
)
from db.tenant_roles import TenantRole, isolate_database

__all__ = [
    "DEFAULT_MAX_PAUSE",
    "MoveError",
    "MoveReport",
    "connect_admin",
    "connect_source",
    "find_tenant",
    "move_tenant",
    "release_hold",
]

DEFAULT_MAX_PAUSE = 30.0  # seconds a studio's writes may be held
HELD_STEPS = ("held", "copied", "verified")  # the source refuses writes after these
SCHEMA_LIMIT = 300.0  # seconds for the schema copy (no writes are held then)
CONNECT_TIMEOUT = 10

Master = psycopg.AsyncConnection[tuple[object, ...]]


class MoveError(Exception):
    """A move that cannot go on; the message says why and what to do."""


@dataclass
class MoveReport:
    tenant: str
    database: str
    source: str  # host:port
    target: str  # host:port
    resumed_from: str | None  # the step a re-run continued after; None: a new move
    steps: list[str] = field(default_factory=list)  # the steps this run completed
    pause_seconds: float | None = None  # writes held, hold to switch (this run's)
    seconds: dict[str, float] = field(default_factory=dict)  # each step this run completed
    tools: str = ""  # the pg_dump used

    def as_dict(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "database": self.database,
            "source": self.source,
            "target": self.target,
            "resumed_from": self.resumed_from,
            "steps": self.steps,
            "pause_seconds": self.pause_seconds,
            "step_seconds": self.seconds,
            "pg_dump": self.tools,
        }


async def connect_admin(conninfo: str) -> Master:
    return await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
    )


async def connect_source(conninfo: str) -> Master:
    """The source database as its server's user, writable even while held: its sessions
    start read-only then, and ALTER DATABASE is refused in a read-only transaction."""
    conn = await connect_admin(conninfo)
    await conn.execute("SET default_transaction_read_only = off")
    return conn


async def find_tenant(master: Master, slug: str) -> TenantLocation:
    for tenant in await list_tenants(master):
        if tenant.slug == slug:
            return tenant
    raise LookupError(slug)


@dataclass
class _Move:
    """One run of a move: the master, the studio, where it goes, and what this run did."""

    master: Master
    master_url: str
    tenant: TenantLocation
    record: MoveRecord
    max_pause: float
    report: MoveReport
    on_step: Callable[[str], None]
    tools: PgTools | None = None
    held_at: float | None = None  # time.monotonic() of the hold
    mark: float = field(default_factory=time.monotonic)  # when the last step ended
    switching: bool = False  # the catalogue's transaction was sent: it may have committed
    schema_history: str = ""  # the history's checksum when the schema was copied

    @property
    def source_admin(self) -> str:
        """The source database as its server's user."""
        return admin_conninfo(self.master_url, self.tenant)

    @property
    def target_location(self) -> TenantLocation:
        return replace(self.tenant, server_url=self.record.target_server_url)

    @property
    def target_admin(self) -> str:
        return with_database(self.record.target_server_url, self.tenant.database_name)

    @property
    def role(self) -> TenantRole | None:
        """The studio's role, as the catalogue knows it (None: a studio made before roles,
        reached as its server's user)."""
        if self.tenant.role_name is None or self.tenant.role_password is None:
            return None
        return TenantRole(self.tenant.role_name, self.tenant.role_password)

    def remaining(self) -> float:
        assert self.held_at is not None
        return self.held_at + self.max_pause - time.monotonic()

    def _completed(self, step: str) -> None:
        now = time.monotonic()
        self.report.seconds[step] = round(now - self.mark, 3)
        self.mark = now
        self.report.steps.append(step)
        self.on_step(step)

    def _add_time(self, step: str) -> None:
        """Count the time since the last mark as `step`'s (work after its record)."""
        now = time.monotonic()
        self.report.seconds[step] = round(self.report.seconds.get(step, 0) + now - self.mark, 3)
        self.mark = now

    async def done(self, step: str) -> None:
        await record_step(self.master, self.record.organization_id, step)
        self.record = replace(self.record, step=step, last_error=None)
        self._completed(step)

    # -- the steps -------------------------------------------------------------------------

    async def check(self) -> None:
        async with await connect_admin(self.source_admin) as source:
            source_major = await _major(source)
        try:
            target = await connect_admin(self.record.target_server_url)
        except psycopg.OperationalError as exc:
            unreachable = f"the target server {self.report.target} is unreachable: {exc}"
            raise MoveError(unreachable) from exc
        async with target:
            target_major = await _major(target)
            exists = await _database_exists(target, self.tenant.database_name)
        if exists and self.record.step == "planned":
            raise MoveError(
                f"the target server {self.report.target} already has a database"
                f" {self.tenant.database_name}; drop it there or choose another server"
            )
        self.tools = tools_for(source_major, target_major)
        self.report.tools = f"{self.tools.major} ({self.tools.bin_dir})"
        if self.record.step == "planned":
            await self.done("checked")  # from here on, the target's database is ours
        await self.prepare_target()

    async def prepare_target(self) -> None:
        """A database on the target with the source's schema and no data, owned by the
        studio's role (made there with the catalogue's password): done before the hold, so
        that it adds nothing to the pause. A copy left by an earlier run (it failed, or was
        stopped) is dropped."""
        name = sql.Identifier(self.tenant.database_name)
        async with await connect_admin(self.record.target_server_url) as target:
            await target.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            await target.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))
        role = self.role
        if role is not None:
            async with await connect_admin(self.target_admin) as copy:
                await isolate_database(copy, self.tenant.database_name, role, set_password=True)
        assert self.tools is not None
        async with await connect_admin(self.source_admin) as source:
            self.schema_history = await history_checksum(source)  # before the schema's dump
        await copy_schema(self.tools, self.source_admin, self.target_admin, limit=SCHEMA_LIMIT)
        if role is not None:  # the tables are the role's before the data goes in
            async with await connect_admin(self.target_admin) as copy:
                await isolate_database(copy, self.tenant.database_name, role, set_password=False)
        self._add_time("checked")

    async def hold(self) -> None:
        async with await connect_source(self.source_admin) as source:
            db = sql.Identifier(self.tenant.database_name)
            await source.execute(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(db)
            )
            self.held_at = time.monotonic()
            # Sessions opened before the ALTER may still write: end them, and wait until they
            # are gone (a commit in flight finishes or rolls back first).
            await _end_sessions(source, self.tenant.database_name, within=self.remaining())
        await self.done("held")

    async def copy(self) -> None:
        assert self.tools is not None
        name = self.tenant.database_name
        role = self.role
        await copy_data(self.tools, self.source_admin, self.target_admin,
                            limit=max(0.0, self.remaining()))  # fmt: skip
        if role is not None:
            async with await connect_admin(self.target_admin) as copy:
                await isolate_database(copy, name, role, set_password=False)
        await self.done("copied")

    async def verify(self) -> None:
        async with await connect_admin(self.source_admin) as source:
            had = await fingerprint(source)
        async with await connect_admin(self.target_admin) as target:
            has = await fingerprint(target)
        found = differences(had, has)
        if had.history_checksum != self.schema_history:
            # The schema was copied before the hold: a migration since makes it stale.
            found.append("a migration ran after the schema was copied; run the move again")
        if found:
            raise MoveError("the copy differs from the source: " + "; ".join(found))
        # As the service will: the studio's role, with the catalogue's password.
        async with await connect_admin(tenant_conninfo(self.master_url, self.target_location)) as c:
            await c.execute("SELECT 1")
        if self.remaining() < 0:
            raise MoveError(f"the copy took longer than --max-pause {self.max_pause:g} s")
        await self.done("verified")

    async def switch(self) -> None:
        assert self.held_at is not None
        pause = time.monotonic() - self.held_at
        self.switching = True
        await switch_catalogue(self.master, self.record, round(pause * 1000))
        self.report.pause_seconds = round(pause, 3)
        self.record = replace(self.record, step="switched")
        self._completed("switched")

    async def close_source(self) -> None:
        # (from another database: PostgreSQL will not close the one a session is in)
        server = with_database(self.tenant.server_url or self.master_url, "postgres")
        async with await connect_admin(server) as source:
            db = sql.Identifier(self.tenant.database_name)
            await source.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(db))
            await _end_sessions(source, self.tenant.database_name, within=CONNECT_TIMEOUT)
        await self.done("done")

    async def release(self, error: BaseException) -> None:
        """Give the source its writes back after a failure before the switch; a re-run
        starts again from the hold."""
        await release_hold(self.source_admin, self.tenant.database_name)
        await record_failure(
            self.master, self.record.organization_id, "checked", f"{type(error).__name__}: {error}"
        )

    async def switched_anyway(self) -> bool | None:
        """After a failure during the switch: did the catalogue change? (None: unknown.)"""
        try:
            move = await read_move(self.master, self.record.organization_id)
        except psycopg.Error:
            return None
        return move is not None and move.step in ("switched", "done")


async def release_hold(source_admin: str, database: str) -> None:
    """The source database takes writes again (new sessions; held ones had none)."""
    async with await connect_source(source_admin) as source:
        db = sql.Identifier(database)
        await source.execute(
            sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(db)
        )


async def _major(conn: Master) -> int:
    cur = await conn.execute("SELECT current_setting('server_version_num')::int / 10000")
    row = await cur.fetchone()
    assert row is not None
    return int(str(row[0]))


async def _database_exists(conn: Master, name: str) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    return await cur.fetchone() is not None


async def _end_sessions(conn: Master, database: str, *, within: float) -> None:
    """End every other session of `database` and wait until they are gone."""
    cur = await conn.execute(
        "SELECT array_agg(pid) FROM (SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()) ended",
        (database,),
    )
    row = await cur.fetchone()
    pids = list(row[0]) if row and isinstance(row[0], list) else []
    deadline = time.monotonic() + within
    while pids:
        cur = await conn.execute(
            "SELECT array_agg(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        )
        row = await cur.fetchone()
        pids = list(row[0]) if row and isinstance(row[0], list) else []
        if pids and time.monotonic() > deadline:
            raise MoveError(f"sessions {pids} of {database} did not end in time")
        if pids:
            await asyncio.sleep(0.01)


async def _begin(
    master: Master, tenant: TenantLocation, target_url: str, master_url: str
) -> MoveRecord:
    """The move's record: a new one, or the one an earlier run left."""
    move = await read_move(master, tenant.organization_id)
    if move is None:
        if server_of(target_url) == server_of(tenant.server_url or master_url):
            raise MoveError(f"studio {tenant.slug} already lives on {server_of(target_url)}")
        return await start_move(
            master, tenant.organization_id, tenant.server_url, tenant.database_name, target_url
        )
    if move.target_server_url == target_url:
        return move
    if move.step == "planned" or (move.step == "checked" and move.last_error is None):
        # Nothing was copied there yet: the operator may send it elsewhere.
        await retarget_move(master, tenant.organization_id, target_url)
        return replace(move, target_server_url=target_url, step="planned")
    raise MoveError(
        f"studio {tenant.slug} is being moved to {server_of(move.target_server_url)}"
        f" (last step: {move.step}); run the move with that --to to continue it"
    )


async def move_tenant(
    master_url: str,
    slug: str,
    target_url: str,
    *,
    max_pause: float = DEFAULT_MAX_PAUSE,
    on_step: Callable[[str], None] = lambda _step: None,
) -> MoveReport:
    """Move studio `slug` to the server of `target_url`, or continue its recorded move.
    Raises MoveError (or a database error) when a step fails, after giving the source its
    writes back if the catalogue still names it; LookupError when there is no such studio."""
    async with await connect_admin(master_url) as master:
        tenant = await find_tenant(master, slug)
        record = await _begin(master, tenant, target_url, master_url)
        if after(record.step, "planned"):
            # Once switched, the catalogue names the target: the source is in the record.
            tenant = replace(
                tenant, server_url=record.source_server_url, database_name=record.source_database
            )
        report = MoveReport(
            tenant.slug,
            tenant.database_name,
            server_of(tenant.server_url or master_url),
            server_of(record.target_server_url),
            record.step if record.step != "planned" else None,
        )
        move = _Move(master, master_url, tenant, record, max_pause, report, on_step)
        if not after(record.step, "verified"):
            await _held_copy(move)
        if record.step != "done" and move.record.step != "done":
            await move.close_source()
        return report


async def _held_copy(move: _Move) -> None:
    """check, hold, copy, verify, switch; on any failure before the switch, release the hold
    (one an earlier run left too: a move killed while holding, then failing to go on)."""
    held_before = move.record.step in HELD_STEPS
    try:
        await move.check()
        await move.hold()
        await move.copy()
        await move.verify()
        await move.switch()
    except BaseException as exc:
        if move.record.step == "switched" or (move.held_at is None and not held_before):
            raise  # the copy serves the studio now; or nothing was held
        switched = await move.switched_anyway() if move.switching else False
        if switched is None:
            raise MoveError(
                f"{exc}; the master did not say whether the catalogue switched: writes stay"
                " held, run the move again to finish it"
            ) from exc
        if not switched:
            try:
                await move.release(exc)
            except Exception as failed:  # noqa: BLE001 (whatever it was, the operator must know)
                raise MoveError(
                    f"{exc}; and its writes could not be given back ({failed}): they stay held,"
                    " run the move again, or --abort"
                ) from exc
        raise
