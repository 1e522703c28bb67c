"""Copy one database into an empty one on another server, with pg_dump and pg_restore.

In two parts:

1. `copy_schema`: the schema before the data (tables, types, functions: `--section=pre-data`)
   as SQL, run by psql in one transaction. As text so that what the target cannot take is
   left out: column options a stock PostgreSQL does not know (this machine's PostgreSQL 15
   writes a `pg_attver` option on every column, and PostgreSQL 18 refuses it);
2. `copy_data`: the data, then indexes and constraints (`--section=data
   --section=post-data`), `pg_dump -Fc | pg_restore`, streamed through a pipe (no dump file
   on disk), in one transaction: whole or reported failed.

A move copies the schema before it holds the studio's writes and the data while it holds
them (db/tenant_move.py: the migration history, compared after, proves the schema did not
change in between). Each part has a time limit: a copy that would hold a studio's writes for
longer is stopped, its tools killed, so the caller can give the studio its writes back at
once. Owners are left out (the target has its own roles; db/tenant_roles.py hands the objects
to the studio's role), errors stop the copy. Passwords travel in the tools' environment,
never on their command line (`ps` shows that).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from db.pg_client_tools import PgTools

__all__ = ["CopyFailed", "CopyTimedOut", "copy_data", "copy_schema", "portable_schema"]

# The column options PostgreSQL itself knows (ALTER TABLE ... ALTER COLUMN ... SET (...)).
KNOWN_COLUMN_OPTIONS = frozenset({"n_distinct", "n_distinct_inherited"})
_COLUMN_OPTIONS = re.compile(r"^ALTER TABLE (?:ONLY )?\S+ ALTER COLUMN \S+ SET \((.*)\);$")


class CopyFailed(Exception):
    """pg_dump, psql or pg_restore failed; the message has what it said."""


class CopyTimedOut(CopyFailed):
    """The copy did not finish within its time limit and was stopped."""


def portable_schema(script: str) -> str:
    """The schema script without the column options a stock PostgreSQL refuses."""
    kept = []
    for line in script.splitlines(keepends=True):
        options = _COLUMN_OPTIONS.match(line.rstrip("\n"))
        if options is not None:
            names = {part.split("=", 1)[0].strip() for part in options.group(1).split(",")}
            if not names & KNOWN_COLUMN_OPTIONS:
                continue
        kept.append(line)
    return "".join(kept)


def _without_password(conninfo: str) -> tuple[str, dict[str, str]]:
    """The connection string without its password, and the environment that carries it."""
    params = conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    env = {"PGPASSWORD": str(password)} if password is not None else {}
    return make_conninfo("", **params), {**os.environ, **env}


def _one_line(said: bytes) -> str:
    text = said.decode(errors="replace")[-3000:]
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


async def _kill(*processes: asyncio.subprocess.Process) -> None:
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _run(command: list[str], env: dict[str, str], given: bytes | None = None) -> bytes:
    """Run one tool; its standard output (CopyFailed when it fails)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE if given is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, said = await process.communicate(given)
    except BaseException:  # the time limit, or the command interrupted: no tool outlives it
        await _kill(process)
        raise
    if process.returncode != 0:
        tool = os.path.basename(command[0])
        raise CopyFailed(f"{tool} failed (exit {process.returncode}): {_one_line(said)}")
    return out


async def _stream(tools: PgTools, source: str, source_env: dict[str, str],
                  target: str, target_env: dict[str, str]) -> None:  # fmt: skip
    """pg_dump -Fc of the data and what follows it, piped into pg_restore."""
    read_end, write_end = os.pipe()
    try:
        dump = await asyncio.create_subprocess_exec(
            tools.pg_dump, "--format=custom", "--compress=0", "--section=data",
            "--section=post-data", f"--dbname={source}",
            stdout=write_end, stderr=asyncio.subprocess.PIPE, env=source_env,
        )  # fmt: skip
        restore = await asyncio.create_subprocess_exec(
            tools.pg_restore, "--no-owner", "--exit-on-error", "--single-transaction",
            f"--dbname={target}",
            stdin=read_end, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env=target_env,
        )  # fmt: skip
    finally:
        # Each tool holds its own end: either seeing the other exit (EOF, or a broken pipe)
        # is what ends it.
        os.close(read_end)
        os.close(write_end)
    assert dump.stderr is not None
    assert restore.stderr is not None
    try:
        dump_rc, restore_rc, dump_said, restore_said = await asyncio.gather(
            dump.wait(), restore.wait(), dump.stderr.read(), restore.stderr.read()
        )
    except BaseException:
        await _kill(dump, restore)
        raise
    # pg_restore first: when it stops, pg_dump dies of the broken pipe and says nothing.
    if restore_rc != 0:
        raise CopyFailed(f"pg_restore failed (exit {restore_rc}): {_one_line(restore_said)}")
    if dump_rc != 0:
        raise CopyFailed(f"pg_dump failed (exit {dump_rc}): {_one_line(dump_said)}")


async def copy_schema(tools: PgTools, source: str, target: str, *, limit: float) -> None:
    """The schema of the database `source` before its data (pre-data) into the empty
    database `target`; CopyTimedOut after `limit` seconds."""
    source_info, source_env = _without_password(source)
    target_info, target_env = _without_password(target)
    try:
        async with asyncio.timeout(limit):
            schema = await _run(
                [tools.pg_dump, "--section=pre-data", "--no-owner", f"--dbname={source_info}"],
                source_env,
            )
            await _run(
                [tools.psql, "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
                 "--single-transaction", f"--dbname={target_info}"],
                target_env, portable_schema(schema.decode()).encode(),
            )  # fmt: skip
    except TimeoutError:
        raise CopyTimedOut(f"the schema copy did not finish within {limit:.3g} s") from None


async def copy_data(tools: PgTools, source: str, target: str, *, limit: float) -> None:
    """The data of `source`, then its indexes and constraints, into `target` (which has its
    schema); CopyTimedOut after `limit` seconds."""
    source_info, source_env = _without_password(source)
    target_info, target_env = _without_password(target)
    try:
        async with asyncio.timeout(limit):
            await _stream(tools, source_info, source_env, target_info, target_env)
    except TimeoutError:
        raise CopyTimedOut(f"the copy did not finish within {limit:.3g} s; stopped") from None
