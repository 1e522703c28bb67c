"""`studio`: one command line for serving, migrating and administering studio-rpc."""

from __future__ import annotations

import argparse
import sys
from typing import cast

from server.cli import admin, migrate, serve, tenant_isolation, tenant_move, tenant_pooling
from server.cli.closed_pipe import ClosedPipeTolerant
from server.cli.help import StudioParser

__all__ = ["main"]

# Each module adds its own sub-commands: add_parser(commands).
# tenant_isolation, tenant_pooling and tenant_move add `tenants isolate`, `tenants
# set-pooled-url` and `tenants move` beside admin's `tenants`: they come after admin.
COMMANDS = [
    serve.add_parser,
    migrate.add_parser,
    admin.add_parser,
    tenant_isolation.add_parser,
    tenant_pooling.add_parser,
    tenant_move.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = StudioParser(
        prog="studio",
        description="studio-rpc: a typed gRPC backend for recording studios, "
        "one PostgreSQL database per studio.",
    )
    # Every sub-command (and theirs) is a StudioParser: defaults, environment and roles in
    # every --help, without each module asking for it.
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(
            dest="command", required=True, metavar="COMMAND", parser_class=StudioParser
        ),
    )
    for add_parser in COMMANDS:
        add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A reader that goes away (`studio keys list --json | head -1`) must not turn into a
    # traceback, nor stop a command half way: what it was doing completes, the rest of its
    # output is dropped, and it exits as it would have.
    with ClosedPipeTolerant.on_stdout():
        code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
