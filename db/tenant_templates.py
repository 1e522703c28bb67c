"""Provisioning at fleet speed: a new tenant database is a copy of a migrated template.

Migrating a new database file by file costs a connection and every file's DDL each time
(about a second per studio). Instead, each server keeps one template database per master and
set of tenant files, migrated once by the runner itself: `CREATE DATABASE ... TEMPLATE` copies
it, history included, in milliseconds. Its name carries a fingerprint of the files it holds,
so when the files change a new template is built (and the old ones of that master dropped) by
the next provisioning, under an advisory lock so that two provisioners build it once.

A template holds the files up to (not including) the first one with per-tenant placeholders:
those, and any later, run on each new database as its role, as `studio migrate up` would.
Templates accept no connections (ALLOW_CONNECTIONS false), since PostgreSQL refuses to copy a
database someone is connected to. The objects in a template belong to a role of its own
(NOLOGIN, one per master, named like its templates), so that a copy hands all of them to its
tenant's role in one REASSIGN OWNED (an ALTER ... OWNER per object cost more than the copy).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from db.migrations.files import MigrationFile
from db.migrations.history import SCHEMA
from db.migrations.runner import RUNNER, Status, run_database
from db.tenant_catalog import with_database
from db.tenant_roles import TenantRole, ensure_template_owner, hand_objects

__all__ = [
    "Template",
    "TemplateError",
    "copy_template",
    "ensure_template",
    "finish_copy",
    "template_files",
]

LAYOUT = "2"  # bump when what a template holds changes in a way the files do not show
TEMPLATE_LOCK = 0x5354_5544_494F_5450  # "STUDIOTP", on the server's postgres database


@dataclass(frozen=True)
class Template:
    name: str
    versions: tuple[int, ...]  # the files it holds

    @property
    def owner(self) -> str:
        """The role that owns the objects in it: `<the part its master's templates share>owner`."""
        return self.name[: self.name.rindex("_") + 1] + "owner"


class TemplateError(Exception):
    """The template could not be built (its files failed there); the message says why."""


def template_files(files: list[MigrationFile]) -> list[MigrationFile]:
    """The files a template may hold: those before the first one with placeholders."""
    held = []
    for file in files:
        if file.uses_placeholders:
            break
        held.append(file)
    return held


def template_name(master_url: str, files: list[MigrationFile]) -> str:
    """`<master database>_tpl_<master hash>_<files hash>`, within 63 characters; every
    template of one master shares the part before the last `_`."""
    master_db = str(conninfo_to_dict(master_url).get("dbname") or "studio")
    digest = hashlib.sha256(LAYOUT.encode())
    for file in files:
        digest.update(f"{file.version}:{file.checksum}\n".encode())
    master = hashlib.sha256(master_db.encode()).hexdigest()[:8]
    return f"{master_db[:26]}_tpl_{master}_{digest.hexdigest()[:16]}"


async def _exists(conn: psycopg.AsyncConnection[tuple[object, ...]], name: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate", (name,)
    )
    return await cur.fetchone() is not None


async def _drop(conn: psycopg.AsyncConnection[tuple[object, ...]], name: str) -> None:
    ident = sql.Identifier(name)
    await conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
    await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


async def ensure_template(
    server_url: str, master_url: str, files: list[MigrationFile]
) -> Template | None:
    """The template for these files on the server of `server_url` (an administrator's URL),
    built if it is missing; None when no file can go into one."""
    held = template_files(files)
    if not held:
        return None
    name = template_name(master_url, held)
    template = Template(name, tuple(f.version for f in held))
    admin = with_database(server_url, "postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        if await _exists(conn, name):
            return template
        await conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK,))
        try:
            if not await _exists(conn, name):
                await _build(conn, server_url, name, held)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK,))
    return template


async def _build(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    server_url: str,
    name: str,
    files: list[MigrationFile],
) -> None:
    prefix = name[: name.rindex("_") + 1]
    cur = await conn.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
        (prefix, name),
    )
    for (stale,) in await cur.fetchall():  # older files', and a build that died half way
        await _drop(conn, str(stale))
    building = sql.Identifier(name)
    await conn.execute(sql.SQL("CREATE DATABASE {}").format(building))
    report = await run_database(
        with_database(server_url, name), files, target=f"template {name}", mode="up"
    )
    if report.status is not Status.APPLIED:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(building))
        raise TemplateError(f"building template {name} failed: {report.as_dict()}")
    template = Template(name, tuple(f.version for f in files))
    await ensure_template_owner(conn, template.owner)
    owner = sql.Identifier(template.owner)
    # Owning the database for a moment lets the role own objects in its schemas (CREATE on
    # public); the administrator takes the database back, or every copy's REASSIGN OWNED
    # would hand the template itself to the copy's role.
    await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(building, owner))
    async with await psycopg.AsyncConnection.connect(with_database(server_url, name)) as built:
        await hand_objects(built, template.owner)  # one transaction, committed as it ends
    await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO CURRENT_USER").format(building))
    await conn.execute(
        sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(building)
    )


async def copy_template(
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    template: Template,
    database_name: str,
    role: TenantRole,
) -> None:
    """CREATE DATABASE as a copy of the template, owned by `role` (which must exist; `conn`:
    the server's postgres database)."""
    await conn.execute(
        sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
            sql.Identifier(database_name), sql.Identifier(role.name), sql.Identifier(template.name)
        )
    )


async def finish_copy(
    conn: psycopg.AsyncConnection[tuple[object, ...]], template: Template, role_name: str
) -> None:
    """In the copy, in one transaction sent as one pipeline: every object handed to its role,
    no CONNECT for PUBLIC, its history as if its role had migrated it file by file, and an
    audit row saying where it came from. Its commit also makes the copy durable (WAL up to
    it is flushed) before the studio is registered."""
    role = sql.Identifier(role_name)
    statements = [
        sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(template.owner), role),
        # The owner keeps CONNECT and TEMPORARY: owner rights stay in the explicit ACL.
        sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(conn.info.dbname)
        ),
        sql.SQL(
            "UPDATE {}.history SET applied_by = {}, applied_at = clock_timestamp(), runner = {}"
        ).format(sql.Identifier(SCHEMA), sql.Literal(role_name), sql.Literal(RUNNER)),
        sql.SQL(
            "INSERT INTO {}.attempts (version, outcome, message, runner)"
            " VALUES ({}, 'copied-template', {}, {})"
        ).format(
            sql.Identifier(SCHEMA),
            sql.Literal(max(template.versions)),
            sql.Literal(f"created as a copy of template {template.name}"),
            sql.Literal(RUNNER),
        ),
    ]
    async with conn.pipeline(), conn.transaction():
        for statement in statements:
            await conn.execute(statement)
