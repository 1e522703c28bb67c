"""Each tenant database has a role of its own: its owner, the owner of everything in it, and
the only role (besides superusers) that may connect to it.

The service and the migration runner reach a tenant as that role, so a routing bug that picks
the wrong database is refused by PostgreSQL (`permission denied for database`) instead of
reading another studio's data. `isolate_database` brings a database to that state from any
starting point (new and empty, or made before roles existed) and changes only what differs,
so running it again changes nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psycopg import sql

from db.engines import STATEMENT_TIMEOUT_MS

if TYPE_CHECKING:
    from psycopg import AsyncConnection

__all__ = [
    "MAY_SET_ROLE",
    "IsolationError",
    "TenantRole",
    "drop_role",
    "ensure_template_owner",
    "ensure_tenant_role",
    "hand_objects",
    "isolate_database",
    "new_password",
    "objects_not_owned_by",
    "set_service_defaults",
    "tenant_role_name",
]

LOCK_TIMEOUT = "5s"
# Written on every role we make; a role without it is not ours to take over or drop.
ROLE_MARKER = "studio-rpc tenant role"
TEMPLATE_MARKER = "studio-rpc owner of the objects in template databases"
# The privilege of pg_has_role that allows SET ROLE: since PostgreSQL 16 a CREATEROLE creator
# holds only ADMIN OPTION on the roles it makes, which no longer implies it.
MAY_SET_ROLE = (
    "CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END"
)

# System schemas, and the ones PostgreSQL makes for temporary and TOAST tables.
# (%% is a literal % in a query with parameters)
_USER_SCHEMA = "n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'"


def _not_extension_member(catalog: str, oid: str) -> str:
    return (
        "NOT EXISTS (SELECT FROM pg_depend d WHERE"
        f" d.classid = '{catalog}'::regclass AND d.objid = {oid} AND d.deptype = 'e')"
    )


# (kind for ALTER ... OWNER TO, object name as PostgreSQL quotes it) of every object in the
# database's own schemas not owned by the role %(role)s. Indexes, TOAST tables, row types of
# tables and sequences of serial or identity columns follow their table (PostgreSQL refuses
# to change their owner on their own).
_NOT_OWNED = f"""
SELECT 'SCHEMA', quote_ident(n.nspname) FROM pg_namespace n
 WHERE {_USER_SCHEMA} AND n.nspowner NOT IN (%(role)s::regrole, 'pg_database_owner'::regrole)
   AND {_not_extension_member("pg_namespace", "n.oid")}
UNION ALL
SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
       WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
       c.oid::regclass::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE {_USER_SCHEMA} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND c.relowner <> %(role)s::regrole
   AND {_not_extension_member("pg_class", "c.oid")}
   AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d
            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
              AND d.deptype IN ('a', 'i')))
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, t.oid::regtype::text
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE {_USER_SCHEMA} AND t.typtype IN ('e', 'd', 'r', 'c')
   AND t.typowner <> %(role)s::regrole
   AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
   AND {_not_extension_member("pg_type", "t.oid")}
UNION ALL
SELECT CASE p.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'ROUTINE' END, p.oid::regprocedure::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE {_USER_SCHEMA} AND p.proowner <> %(role)s::regrole
   AND {_not_extension_member("pg_proc", "p.oid")}
ORDER BY 1, 2
"""


class IsolationError(Exception):
    """The database cannot be given a role of its own (e.g. the name belongs to a stranger)."""


@dataclass(frozen=True)
class TenantRole:
    name: str
    password: str = field(repr=False)  # a secret: never in a log line or a report


def tenant_role_name(database_name: str) -> str:
    """The role is named like its database: unique on its server for the same reason, and
    within PostgreSQL's 63 characters whenever the database name is."""
    return database_name


def new_password() -> str:
    return secrets.token_urlsafe(32)


async def _role_state(
    conn: AsyncConnection[tuple[object, ...]], name: str
) -> tuple[bool, str] | None:
    """(is superuser, comment) of role `name`, or None when there is no such role."""
    cur = await conn.execute(
        "SELECT rolsuper, coalesce(shobj_description(oid, 'pg_authid'), '')"
        " FROM pg_roles WHERE rolname = %s",
        (name,),
    )
    row = await cur.fetchone()
    return None if row is None else (bool(row[0]), str(row[1]))


def _password_clause(conn: AsyncConnection[tuple[object, ...]], role: TenantRole) -> sql.Composed:
    # Hashed here (as psql's \password does), so the plain password never reaches the
    # server, nor its statement log.
    verifier = conn.pgconn.encrypt_password(
        role.password.encode(), role.name.encode(), b"scram-sha-256"
    )
    return sql.SQL("PASSWORD {}").format(sql.Literal(verifier.decode()))


async def ensure_tenant_role(
    conn: AsyncConnection[tuple[object, ...]],
    role: TenantRole,
    database_name: str,
    *,
    set_password: bool,
) -> list[str]:
    """Role `role` for database `database_name`, made if missing (its password set when
    `set_password`), with the service's defaults, one the administrator may SET ROLE to;
    what it changed."""
    ident = sql.Identifier(role.name)
    state = await _role_state(conn, role.name)
    if state is None:
        await conn.execute(
            sql.SQL(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION {}"
            ).format(ident, _password_clause(conn, role))
        )
        comment = f"{ROLE_MARKER} of database {database_name}"
        await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(comment)))
        changes = ["created the role"]
    else:
        superuser, comment = state
        if superuser or not comment.startswith(ROLE_MARKER):
            raise IsolationError(
                f"a role {role.name!r} exists and is not a studio tenant role;"
                " refusing to take it over"
            )
        changes = []
        if set_password:
            await conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN {}").format(ident, _password_clause(conn, role))
            )
            changes.append("set the role's password")
    await set_service_defaults(conn, role.name)
    if await _let_administrator_set_role(conn, role.name):
        changes.append("made the administrator a member of the role")
    return changes


async def _let_administrator_set_role(conn: AsyncConnection[tuple[object, ...]], name: str) -> bool:
    """A non-superuser administrator must be able to SET ROLE to `name` to hand objects to it
    (or from it); True when it was not yet and has been made a member."""
    cur = await conn.execute(
        f"SELECT NOT rolsuper AND NOT pg_has_role(current_user, %s, {MAY_SET_ROLE})"
        " FROM pg_roles WHERE rolname = current_user",
        (name,),
    )
    row = await cur.fetchone()
    if row and row[0]:
        await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(name)))
        return True
    return False


async def ensure_template_owner(conn: AsyncConnection[tuple[object, ...]], name: str) -> None:
    """The role `name` (NOLOGIN) that owns the objects of a master's template databases on
    this server: each copy hands them all to its tenant role in one REASSIGN OWNED, instead
    of an ALTER per object. One per master, made by that master's administrator: a
    non-superuser may only use roles it made."""
    ident = sql.Identifier(name)
    state = await _role_state(conn, name)
    if state is None:
        await conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        await conn.execute(
            sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(TEMPLATE_MARKER))
        )
    elif state[0] or state[1] != TEMPLATE_MARKER:
        raise IsolationError(f"a role {name!r} exists and is not studio-rpc's; refusing to use it")
    await _let_administrator_set_role(conn, name)


async def hand_objects(conn: AsyncConnection[tuple[object, ...]], role_name: str) -> int:
    """Make `role_name` the owner of every object of the connected database (inside the
    caller's transaction); how many changed owner."""
    objects = await objects_not_owned_by(conn, role_name)
    for kind, name in objects:
        await conn.execute(
            sql.SQL("ALTER {} {} OWNER TO {}").format(
                sql.SQL(kind), sql.SQL(name), sql.Identifier(role_name)
            )
        )
    return len(objects)


async def _own_database(
    conn: AsyncConnection[tuple[object, ...]], role: TenantRole, database_name: str
) -> list[str]:
    changes = []
    db = sql.Identifier(database_name)
    cur = await conn.execute(
        "SELECT pg_get_userbyid(datdba) <> %s, has_database_privilege('public', datname, 'CONNECT')"
        " OR has_database_privilege('public', datname, 'TEMPORARY')"
        " FROM pg_database WHERE datname = %s",
        (role.name, database_name),
    )
    row = await cur.fetchone()
    if row is None:
        raise IsolationError(f"database {database_name} does not exist")
    foreign_owner, public_connect = bool(row[0]), bool(row[1])
    if foreign_owner:
        await conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(role.name))
        )
        changes.append("made the role the database's owner")
    if public_connect:
        # The owner keeps CONNECT and TEMPORARY: owner rights stay in the explicit ACL.
        await conn.execute(
            sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db)
        )
        changes.append("revoked CONNECT from PUBLIC")
    return changes


async def objects_not_owned_by(
    conn: AsyncConnection[tuple[object, ...]], role_name: str
) -> list[tuple[str, str]]:
    """(kind, name) of the objects of the connected database that `role_name` does not own."""
    cur = await conn.execute(_NOT_OWNED, {"role": role_name})
    return [(str(kind), str(name)) for kind, name in await cur.fetchall()]


async def isolate_database(
    conn: AsyncConnection[tuple[object, ...]],
    database_name: str,
    role: TenantRole,
    *,
    set_password: bool,
) -> list[str]:
    """Give `database_name` (the database `conn`, an administrator's, is connected to) to
    `role`, in one transaction: the role exists (its password set when `set_password`), owns
    the database and every object in it, and PUBLIC may not connect. What it changed."""
    async with conn.transaction():
        # Changing a table's owner locks it: never queue behind (or in front of) the
        # service's calls for long; a tenant that times out is reported and can be rerun.
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        changes = await ensure_tenant_role(conn, role, database_name, set_password=set_password)
        changes += await _own_database(conn, role, database_name)
        handed = await hand_objects(conn, role.name)
        if handed:
            changes.append(f"handed {handed} objects to the role")
    return changes


async def set_service_defaults(conn: AsyncConnection[tuple[object, ...]], role_name: str) -> None:
    """The service's statement cap as the role's own default: a connection through a pooler
    may carry no startup option and no session SET, and this costs no round trip per call
    (the runner, connecting directly, sets its own; pg_dump sets 0)."""
    await conn.execute(
        sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
            sql.Identifier(role_name), sql.Literal(STATEMENT_TIMEOUT_MS)
        )
    )


async def drop_role(conn: AsyncConnection[tuple[object, ...]], name: str) -> None:
    """Drop the tenant role `name` if it is one of ours (after its database is gone)."""
    state = await _role_state(conn, name)
    if state is not None and not state[0] and state[1].startswith(ROLE_MARKER):
        await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
