"""`studio tenants` and `studio keys`: provisioning studios and managing their API keys.

Keys are shown once, when created; only a hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from db.api_keys import create_key, list_keys, revoke_key
from db.engines import create_engine_for
from db.local_postgres import LocalPostgres
from db.master_tables import API_KEY_ROLES, organizations
from db.tenants import ProvisionError, provision_tenant
from server.cli._common import EXIT_CONFIG, configured_database_url, default_data_dir
from server.database_setup import MASTER_DATABASE

__all__ = ["add_parsers"]

EXIT_FAILED = 3


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenants = commands.add_parser("tenants", help="provision studios (tenants)")
    tenant_actions = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tenant_actions.add_parser(
        "create",
        help="provision a studio: its own database, migrated, and an admin key (shown once)",
    )
    create.add_argument("--name", required=True, help="the studio's name")
    create.add_argument("--slug", help="short unique name (default: made from --name)")
    create.add_argument(
        "--server-url", help="PostgreSQL server for its database (default: the master's)"
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.set_defaults(run=_runner(_create_tenant))

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    key_create = key_actions.add_parser("create", help="a new key for a studio (shown once)")
    key_create.add_argument("--tenant", required=True, help="the studio's slug")
    key_create.add_argument("--role", choices=API_KEY_ROLES, default="member")
    key_create.add_argument("--name", default="", help="what the key is for")
    key_create.add_argument("--json", action="store_true")
    key_create.set_defaults(run=_runner(_create_key))
    key_list = key_actions.add_parser("list", help="keys (prefixes only) and their state")
    key_list.add_argument("--tenant", help="only this studio's keys")
    key_list.add_argument("--json", action="store_true")
    key_list.set_defaults(run=_runner(_list_keys))
    key_revoke = key_actions.add_parser("revoke", help="revoke a key by its prefix")
    key_revoke.add_argument("prefix", help="the 12 characters after sk_")
    key_revoke.set_defaults(run=_runner(_revoke_key))


def _runner(
    action: Callable[[argparse.Namespace, str], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    """Run `action` against the master database (the embedded one when no URL is set)."""

    def run(args: argparse.Namespace) -> int:
        async def main() -> int:
            url = configured_database_url()
            embedded = None
            if url is None:
                embedded = LocalPostgres(default_data_dir() / "pgdata")
                embedded.start()
                url = embedded.url(MASTER_DATABASE)
            try:
                return await action(args, url)
            finally:
                if embedded is not None:
                    embedded.stop()

        return asyncio.run(main())

    return run


async def _create_tenant(args: argparse.Namespace, master_url: str) -> int:
    try:
        tenant = await provision_tenant(
            master_url, name=args.name, slug=args.slug, server_url=args.server_url
        )
    except ProvisionError as exc:
        print(f"studio tenants create: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        created = {
            "tenant": tenant.slug,
            "organization_id": tenant.organization_id,
            "database": tenant.database_name,
            "api_key": tenant.api_key,
        }
        print(json.dumps(created))
    else:
        print(f"studio {tenant.slug!r} provisioned in database {tenant.database_name}")
        print(f"admin API key (shown once, keep it safe): {tenant.api_key}")
    return 0


@contextlib.asynccontextmanager
async def _master_transaction(master_url: str) -> AsyncIterator[AsyncConnection]:
    engine = create_engine_for(master_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            yield conn
    finally:
        await engine.dispose()


async def _create_key(args: argparse.Namespace, master_url: str) -> int:
    async with _master_transaction(master_url) as conn:
        org_id = await conn.scalar(
            select(organizations.c.id).where(organizations.c.slug == args.tenant)
        )
        if org_id is None:
            print(f"studio keys create: no studio {args.tenant!r}", file=sys.stderr)
            return EXIT_CONFIG
        key = await create_key(conn, organization_id=org_id, role=args.role, name=args.name)
    shown = {"tenant": args.tenant, "role": args.role, "api_key": key}
    print(json.dumps(shown) if args.json else key)
    return 0


async def _list_keys(args: argparse.Namespace, master_url: str) -> int:
    async with _master_transaction(master_url) as conn:
        keys = await list_keys(conn, slug=args.tenant)
    for key in keys:
        revoked = key.revoked_at.isoformat() if key.revoked_at else None
        if args.json:
            listed = {
                "tenant": key.organization_slug,
                "prefix": key.prefix,
                "role": key.role,
                "name": key.name,
                "created_at": key.created_at.isoformat(),
                "revoked_at": revoked,
            }
            print(json.dumps(listed))
        else:
            state = f"revoked {revoked}" if revoked else "active"
            print(
                f"{key.organization_slug:<20} sk_{key.prefix}_…  {key.role:<10} {state}  {key.name}"
            )
    return 0


async def _revoke_key(args: argparse.Namespace, master_url: str) -> int:
    async with _master_transaction(master_url) as conn:
        revoked = await revoke_key(conn, prefix=args.prefix)
    if not revoked:
        print(f"studio keys revoke: no active key {args.prefix!r}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"revoked sk_{args.prefix}_…; calls with it fail within the key cache time (5 s)")
    return 0
