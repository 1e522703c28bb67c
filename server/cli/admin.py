"""`studio tenants` and `studio keys`: provisioning studios and managing their API keys.

Keys are shown once, when created; only a hash is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from db.api_keys import create_key, list_keys, masked_key, parse_key_reference, revoke_key
from db.engines import create_engine_for
from db.master_tables import API_KEY_ROLES
from db.organizations import list_organizations, organization_id
from db.tenant_catalog import describe_conninfo, server_of
from db.tenant_move_state import list_moves
from db.tenants import ProvisionedTenant, ProvisionError, TenantSpec, provision_tenants
from server.cli._common import (
    EXIT_CONFIG,
    NoMasterDatabase,
    add_data_dir_option,
    data_dir_of,
    master_database_url,
)

__all__ = ["add_parser", "add_tenants_action"]

EXIT_FAILED = 3
UNDEFINED_TABLE = "42P01"

EXIT_CODES = """\
exit codes:
  0  done
  1  no master database; no such studio; no such active key; nothing to provision
  2  bad command line
  3  failed: provisioning failed (with --count or --from-file: one studio or
     more; the others were provisioned), or the master database could not be
     reached or queried"""

Action = Callable[[argparse.Namespace, str], Coroutine[Any, Any, int]]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenants = commands.add_parser(
        "tenants", help="provision and list studios (tenants)", epilog=EXIT_CODES
    )
    tenant_actions = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _action(
        tenant_actions,
        "create",
        _create_tenant,
        "provision a studio: its own database, migrated, and an admin key (shown once)",
    )
    create.add_argument(
        "--name", help="the studio's name (with --count: the names are NAME 1 ... NAME N)"
    )
    create.add_argument("--slug", help="short unique name (default: made from --name)")
    create.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="provision N studios named --name 1 ... --name N (tests, load)",
    )
    create.add_argument(
        "--from-file",
        type=argparse.FileType("r"),
        metavar="FILE",
        help="provision one studio per line of FILE, a JSON object"
        ' {"name": ..., "slug": ..., "server_url": ..., "pooled_url": ...} (all but name'
        " optional);"
        " - reads standard input. Keys print as JSON lines, one per studio",
    )
    create.add_argument(
        "--jobs",
        type=int,
        default=4,
        help="studios provisioned at once (--count, --from-file)",
    )
    create.add_argument(
        "--server-url",
        metavar="URL",
        help="PostgreSQL server for its database (default: the master's)",
    )
    create.add_argument(
        "--pooled-url",
        metavar="URL",
        help="a pooler in front of its server (PgBouncer, transaction mode) the service"
        " connects through, as a libpq URL without database or user; the runner keeps"
        " --server-url (see set-pooled-url)",
    )
    create.add_argument(
        "--json", action="store_true", help="print one JSON object (with the admin key)"
    )
    tenant_list = _action(
        tenant_actions,
        "list",
        _list_tenants,
        "every studio: slug, name, database, server (host:port), active, created, and a"
        " move in progress (its last step and target)",
    )
    tenant_list.add_argument("--json", action="store_true", help="one JSON object per line")

    keys = commands.add_parser("keys", help="create, list and revoke API keys", epilog=EXIT_CODES)
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    key_create = _action(key_actions, "create", _create_key, "a new key for a studio (shown once)")
    key_create.add_argument("--tenant", required=True, help="the studio's slug")
    key_create.add_argument(
        "--role", choices=API_KEY_ROLES, default="member", help="what the key may do (see below)"
    )
    key_create.add_argument("--name", default="", help="what the key is for (shown by list)")
    key_create.add_argument("--json", action="store_true", help="print one JSON object")
    key_list = _action(key_actions, "list", _list_keys, "keys (prefixes only) and their state")
    key_list.add_argument("--tenant", help="only this studio's keys (default: every studio's)")
    key_list.add_argument("--json", action="store_true", help="one JSON object per line")
    key_revoke = _action(
        key_actions,
        "revoke",
        _revoke_key,
        "revoke a key: calls with it fail once the server's key cache expires (5 s by default)",
    )
    key_revoke.add_argument(
        "key",
        metavar="KEY",
        help="the key as `keys list` shows it (sk_<prefix>_…, or the prefix of --json), "
        "or the whole key",
    )


def add_tenants_action(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    description: str | None,
) -> argparse.ArgumentParser:
    """One more action of `studio tenants`, for a module of its own that adds it beside
    these (after add_parser): its docstring is the action's description."""
    tenants = commands.choices["tenants"]
    actions = next(a for a in tenants._actions if isinstance(a, argparse._SubParsersAction))
    # StudioParser's formatter: it keeps indented blocks and shows each option's default
    return actions.add_parser(name, help=help_text, description=description)  # type: ignore[no-any-return]


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    action: Action,
    help_text: str,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES)
    add_data_dir_option(parser)
    parser.set_defaults(run=_runner(action))
    return parser


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    """Run `action` against the master database; a database that is missing or fails is one
    line on stderr, never a traceback."""

    def run(args: argparse.Namespace) -> int:
        command = f"studio {args.command} {args.action}"
        try:
            url = master_database_url(data_dir_of(args))
        except NoMasterDatabase as exc:
            print(f"{command}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            return asyncio.run(action(args, url))
        except (DBAPIError, psycopg.Error) as exc:
            print(f"{command}: {_database_failure(url, exc)}", file=sys.stderr)
            return EXIT_FAILED

    return run


def _database_failure(url: str, exc: DBAPIError | psycopg.Error) -> str:
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    said = f"the master database {describe_conninfo(url)} failed: {first_line}"
    if getattr(error, "sqlstate", None) == UNDEFINED_TABLE:
        said += " (is it migrated? `studio migrate up`)"
    return said


def _specs(args: argparse.Namespace) -> list[TenantSpec] | str:
    """The studios to provision, or why the command line names none."""
    if args.from_file is not None:
        specs = []
        for number, line in enumerate(args.from_file, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                specs.append(TenantSpec(str(entry["name"]), entry.get("slug"),
                                        entry.get("server_url") or args.server_url,
                                        entry.get("pooled_url") or args.pooled_url))  # fmt: skip
            except (ValueError, KeyError, TypeError) as exc:
                return (
                    f"line {number} of {args.from_file.name}: not a JSON object with a name ({exc})"
                )
        return specs
    if not args.name:
        return "give --name (or --from-file)"
    if args.count is not None:
        if args.count < 1 or args.slug:
            return "--count takes N >= 1, and makes the slugs from the names (no --slug)"
        return [
            TenantSpec(f"{args.name} {n}", None, args.server_url, args.pooled_url)
            for n in range(1, args.count + 1)
        ]
    return [TenantSpec(args.name, args.slug, args.server_url, args.pooled_url)]


def _show(tenant: ProvisionedTenant, *, as_json: bool) -> None:
    if as_json:
        created = {
            "tenant": tenant.slug,
            "organization_id": tenant.organization_id,
            "database": tenant.database_name,
            "api_key": tenant.api_key,
        }
        print(json.dumps(created), flush=True)
    else:
        print(f"studio {tenant.slug!r} provisioned in database {tenant.database_name}")
        print(f"admin API key (shown once, keep it safe): {tenant.api_key}")


async def _create_tenant(args: argparse.Namespace, master_url: str) -> int:
    specs = _specs(args)
    if isinstance(specs, str):
        print(f"studio tenants create: {specs}", file=sys.stderr)
        return EXIT_CONFIG
    bulk = len(specs) > 1 or args.from_file is not None
    failed = []

    def done(spec: TenantSpec, result: ProvisionedTenant | ProvisionError) -> None:
        if isinstance(result, ProvisionError):
            failed.append(spec)
            print(f"studio tenants create: {spec.name}: {result}", file=sys.stderr)
        else:
            _show(result, as_json=args.json or bulk)

    await provision_tenants(master_url, specs, concurrency=max(1, args.jobs), on_done=done)
    if bulk:
        print(f"provisioned {len(specs) - len(failed)} of {len(specs)} studios", file=sys.stderr)
    return EXIT_FAILED if failed else 0


async def _list_tenants(args: argparse.Namespace, master_url: str) -> int:
    async with _master_transaction(master_url) as conn:
        tenants = await list_organizations(conn)
    async with await psycopg.AsyncConnection.connect(master_url, autocommit=True) as master:
        moves = await list_moves(master)
    for tenant in tenants:
        server = server_of(tenant.server_url or master_url)  # host:port, never a password
        move = moves.get(tenant.slug)
        moving: dict[str, str] | None = None if move is None else {
            "step": move.step,
            "from": server_of(move.source_server_url or master_url),
            "to": server_of(move.target_server_url),
        }  # fmt: skip
        if args.json:
            listed = {
                "slug": tenant.slug,
                "name": tenant.name,
                "database": tenant.database_name,
                "server": server,
                "active": tenant.is_active,
                "created_at": tenant.created_at.isoformat(),
                "move": moving,
            }
            print(json.dumps(listed))
        else:
            state = "active" if tenant.is_active else "inactive"
            note = "" if moving is None else (
                f"  [move {moving['from']} -> {moving['to']}: {moving['step']}]"
            )  # fmt: skip
            print(
                f"{tenant.slug:<20} {tenant.database_name:<40} {server:<22} {state:<8} "
                f"{tenant.created_at:%Y-%m-%d %H:%M}  {tenant.name}{note}"
            )
    return 0


@contextlib.asynccontextmanager
async def _master_transaction(master_url: str) -> AsyncIterator[AsyncConnection]:
    engine = create_engine_for(master_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            yield conn
    finally:
        await engine.dispose()


def _no_studio(args: argparse.Namespace) -> int:
    print(f"studio keys {args.action}: no studio {args.tenant!r}", file=sys.stderr)
    return EXIT_CONFIG


async def _create_key(args: argparse.Namespace, master_url: str) -> int:
    async with _master_transaction(master_url) as conn:
        org_id = await organization_id(conn, args.tenant)
        if org_id is None:
            return _no_studio(args)
        key = await create_key(conn, organization_id=org_id, role=args.role, name=args.name)
    shown = {"tenant": args.tenant, "role": args.role, "api_key": key}
    print(json.dumps(shown) if args.json else key)
    return 0


async def _list_keys(args: argparse.Namespace, master_url: str) -> int:
    async with _master_transaction(master_url) as conn:
        if args.tenant is not None and await organization_id(conn, args.tenant) is None:
            return _no_studio(args)
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
                f"{key.organization_slug:<20} {masked_key(key.prefix)}  {key.role:<10} "
                f"{state}  {key.name}"
            )
    return 0


async def _revoke_key(args: argparse.Namespace, master_url: str) -> int:
    reference = parse_key_reference(args.key)
    if reference is None:
        print(
            f"studio keys revoke: {args.key!r} is not a key: give it as `studio keys list` "
            "shows it (sk_<12 characters>_…) or whole",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    async with _master_transaction(master_url) as conn:
        revoked = await revoke_key(conn, reference)
    shown = masked_key(reference.prefix)
    if not revoked:
        print(f"studio keys revoke: no active key {shown}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"revoked {shown}; calls with it fail once the server's key cache expires "
        "(serve --key-cache-seconds, 5 s by default)"
    )
    return 0
