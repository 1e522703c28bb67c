"""`studio tenants set-pooled-url`: serve studios through a pooler (PgBouncer) in front of
their server, or directly again.

Operators usually run one PgBouncer (transaction mode) per PostgreSQL server: `--server`
points every studio on that server at it in one step; `--tenant` moves one studio (a canary
first, say). The address is kept per studio in the catalogue (tenant_databases.pooled_url),
so a studio moved to another server takes its own pooler setting with it and no second
lookup runs on the call path. Studios made later on that server take `tenants create
--pooled-url`. The migration runner and the operator commands keep the direct address:
DDL, advisory locks and no-transaction files need a session of their own.

Each studio's role gets the service's statement cap as its own default here (new studios
have it from provisioning): through a pooler the service sends no startup option and no
session SET. A studio made before tenant roles is refused: `studio tenants isolate` it first.

Exit codes: 0 done, 1 no such studio (or none on that server), or one without a role of its
own, 3 the master or a tenant's server could not be reached.
"""

from __future__ import annotations

import argparse
import sys

import psycopg

from db.tenant_catalog import TenantLocation, server_of, set_pooled_url, with_database
from db.tenant_roles import set_service_defaults
from server.cli._common import EXIT_CONFIG, add_data_dir_option
from server.cli.admin import _runner, add_tenants_action  # _runner: against the master

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `set-pooled-url` to the actions of `studio tenants` (made by server/cli/admin.py)."""
    parser = add_tenants_action(
        commands,
        "set-pooled-url",
        "serve studios through a pooler (PgBouncer) in front of their server",
        __doc__,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", metavar="SLUG", help="this studio")
    which.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="every studio whose database is on this PostgreSQL server (host:port, or a URL)",
    )
    url = parser.add_mutually_exclusive_group(required=True)
    url.add_argument(
        "url",
        nargs="?",
        metavar="POOLED_URL",
        help="the pooler, a libpq URL without database or user (postgresql://pgbouncer:6432)",
    )
    url.add_argument("--clear", action="store_true", help="serve them directly again")
    add_data_dir_option(parser)
    parser.set_defaults(run=_runner(_set_pooled_url))


async def _set_pooled_url(args: argparse.Namespace, master_url: str) -> int:
    server = args.server
    if server is not None and "://" in server:
        server = server_of(server)
    pooled = None if args.clear else args.url
    async with await psycopg.AsyncConnection.connect(master_url) as master:
        tenants = await set_pooled_url(master, master_url, pooled, slug=args.tenant, server=server)
        which = f"studio {args.tenant!r}" if args.tenant else f"studio on {server}"
        if not tenants:
            print(f"studio tenants set-pooled-url: no {which}", file=sys.stderr)
            return EXIT_CONFIG
        legacy = [t.slug for t in tenants if t.role_name is None]
        if legacy and pooled is not None:
            await master.rollback()
            print(
                "studio tenants set-pooled-url: these studios have no role of their own"
                f" (`studio tenants isolate` them first): {', '.join(legacy)}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if pooled is not None:
            await _role_defaults(master_url, tenants)
        await master.commit()  # only once every role has its default
    where = "directly" if pooled is None else f"through {server_of(pooled)}"
    for tenant in tenants:
        print(f"{tenant.slug}: served {where}")
    return 0


async def _role_defaults(master_url: str, tenants: list[TenantLocation]) -> None:
    """The statement cap as each tenant role's default, over one connection per server
    (roles are the server's, not one database's)."""
    by_server: dict[str, list[str]] = {}
    for tenant in tenants:
        assert tenant.role_name is not None
        by_server.setdefault(tenant.server_url or master_url, []).append(tenant.role_name)
    for url, roles in by_server.items():
        async with await psycopg.AsyncConnection.connect(
            with_database(url, "postgres"), autocommit=True
        ) as conn:
            for role in roles:
                await set_service_defaults(conn, role)
