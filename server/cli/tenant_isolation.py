"""`studio tenants isolate`: give studios made before tenant roles a role of their own.

A studio provisioned today already has one: its role owns its database and everything in it,
only that role may connect, and the service reaches the studio as it. This converts the
others (and repairs any that drifted), one studio at a time, reporting each; a studio already
isolated is left as it is, so running it again changes nothing.

Exit codes: 0 every studio isolated, 1 no such studio, 3 some studio could not be converted.
"""

from __future__ import annotations

import argparse
import json
import sys

import psycopg

from db.tenant_catalog import list_tenants
from db.tenant_isolation import IsolationReport, IsolationStatus, isolate_tenant
from server.cli._common import EXIT_CONFIG, add_data_dir_option
from server.cli.admin import _runner, tenant_actions  # _runner: against the master

__all__ = ["add_parser"]

EXIT_FAILED = 3


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `isolate` to the actions of `studio tenants` (made by server/cli/admin.py)."""
    isolate = tenant_actions(commands).add_parser(
        "isolate",
        help="give studios made before tenant roles a database role of their own",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = isolate.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every studio in the catalogue")
    which.add_argument("slugs", nargs="*", default=[], metavar="SLUG", help="these studios")
    isolate.add_argument("--json", action="store_true", help="one JSON object per studio")
    add_data_dir_option(isolate)
    isolate.set_defaults(run=_runner(_isolate))


def _print(report: IsolationReport, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict()), flush=True)
        return
    if report.status is IsolationStatus.FAILED:
        detail = report.error
    else:
        detail = "; ".join(report.changes) or "nothing to change"
    print(f"{report.tenant}: {report.status} as role {report.role} ({detail})", flush=True)


async def _isolate(args: argparse.Namespace, master_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(master_url, autocommit=True) as master:
        tenants = await list_tenants(master)
        if not args.all:
            known = {t.slug for t in tenants}
            unknown = [slug for slug in args.slugs if slug not in known]
            if unknown:
                print(f"studio tenants isolate: no studio {', '.join(unknown)}", file=sys.stderr)
                return EXIT_CONFIG
            tenants = [t for t in tenants if t.slug in set(args.slugs)]
        failed = 0
        for tenant in tenants:
            report = await isolate_tenant(master, master_url, tenant)
            failed += report.status is IsolationStatus.FAILED
            _print(report, as_json=args.json)
    return EXIT_FAILED if failed else 0
