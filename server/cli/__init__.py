"""`studio`: one command line for serving, migrating and administering studio-rpc."""

from __future__ import annotations

import argparse
import sys

from server.cli import admin, migrate, serve, tenant_isolation

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio",
        description="studio-rpc: a typed gRPC backend for recording studios, "
        "one PostgreSQL database per studio.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.add_parser(commands)
    migrate.add_parser(commands)
    admin.add_parsers(commands)
    tenant_isolation.add_parser(commands)  # `tenants isolate`, beside admin's `tenants`
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
