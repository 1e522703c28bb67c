"""What every `studio ... --help` shows: each option's default, the environment, the roles."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

__all__ = ["ENVIRONMENT", "ROLES", "StudioHelpFormatter", "StudioParser"]

ENVIRONMENT = """\
environment:
  STUDIO_DATABASE_URL  the master database (a libpq URL); unset: the embedded
                       PostgreSQL that `studio serve` runs from the data
                       directory (other commands use it only while it runs:
                       they never create or start one)
  STUDIO_DATA_DIR      the data directory when --data-dir is not given
                       (default: ./.studio)"""

ROLES = """\
API key roles (`keys create --role`; `tenants create` makes an admin key):
  admin      every procedure; today the same as member (no procedure is
             reserved to admin)
  member     every procedure: queries (Get, List) and writes (Create,
             Update, Delete)
  read_only  queries only (Get, List); a write is PERMISSION_DENIED
             (reason READ_ONLY_KEY)"""


class StudioHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option that has one; keeps indented blocks (tables of exit
    codes, environment variables) as written and wraps plain paragraphs."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or "%(default)" in text or not action.option_strings:
            return text
        if action.default in (None, False, "", argparse.SUPPRESS):  # nothing worth showing
            return text
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line[:1].isspace() for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(lines), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
        return "\n\n".join(paragraphs)


class StudioParser(argparse.ArgumentParser):
    """The parser of `studio` and of every sub-command (passed as `parser_class`)."""

    # Whatever ArgumentParser takes, passed through (add_subparsers passes keywords only).
    def __init__(self, *, epilog: str | None = None, **kwargs: Any) -> None:  # noqa: ANN401
        kwargs.setdefault("formatter_class", StudioHelpFormatter)
        common = f"{ENVIRONMENT}\n\n{ROLES}"
        super().__init__(epilog=f"{epilog}\n\n{common}" if epilog else common, **kwargs)
