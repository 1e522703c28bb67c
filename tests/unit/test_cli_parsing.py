"""The CLI's pure parts: how an operator may name a key, and what every --help must explain."""

from __future__ import annotations

import argparse
import hashlib

import pytest

from db.api_keys import KeyReference, masked_key, parse_key_reference
from server.cli import build_parser
from server.cli.help import StudioHelpFormatter

KEY = "sk_0123456789ab_c2VjcmV0LXNlY3JldC1zZWNyZXQ"
PREFIX = "0123456789ab"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (masked_key(PREFIX), KeyReference(PREFIX, None)),  # as `keys list` prints it
        (f"sk_{PREFIX}_...", KeyReference(PREFIX, None)),  # the ellipsis typed as dots
        (f"sk_{PREFIX}_", KeyReference(PREFIX, None)),
        (f"sk_{PREFIX}", KeyReference(PREFIX, None)),
        (PREFIX, KeyReference(PREFIX, None)),  # the prefix of `keys list --json`
        (f"  {PREFIX}\n", KeyReference(PREFIX, None)),
        (KEY, KeyReference(PREFIX, hashlib.sha256(KEY.encode()).digest())),  # the whole key
        ("sk_0123_…", None),
        ("0123456789abc", None),
        ("sk_0123456789a!_…", None),
        ("", None),
    ],
)
def test_a_key_is_named_as_listed_or_whole(given: str, expected: KeyReference | None) -> None:
    assert parse_key_reference(given) == expected


def every_parser() -> list[argparse.ArgumentParser]:
    found = [build_parser()]
    for parser in found:  # grows while walked
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.extend(action.choices.values())
    return found


def test_every_option_and_command_is_explained() -> None:
    unexplained = [
        f"{parser.prog} {action.option_strings or action.dest}"
        for parser in every_parser()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    commands = [
        f"{parser.prog} {choice.dest}"
        for parser in every_parser()
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action._choices_actions
        if not choice.help
    ]
    assert unexplained + commands == []


def help_of(**argument: object) -> str:
    parser = argparse.ArgumentParser(prog="x", formatter_class=StudioHelpFormatter)
    parser.add_argument("--option", **argument)  # type: ignore[arg-type]
    return " ".join(parser.format_help().split())


@pytest.mark.parametrize(
    ("argument", "shown"),
    [
        ({"default": 8, "help": "jobs"}, "jobs (default: 8)"),
        ({"default": "x", "help": "said (default: the master's)"}, "said (default: the master's)"),
    ],
)
def test_a_default_is_shown_once(argument: dict[str, object], shown: str) -> None:
    assert shown in help_of(**argument)
    assert help_of(**argument).count("(default") == 1


@pytest.mark.parametrize(
    "argument",
    [{"help": "no default"}, {"action": "store_true", "help": "a flag"}, {"default": ""}],
)
def test_no_default_is_shown_when_there_is_none(argument: dict[str, object]) -> None:
    assert "(default" not in help_of(**argument)


def test_indented_blocks_are_kept_and_paragraphs_wrapped() -> None:
    text = "a paragraph\nwrapped again\n\ncodes:\n  0  done\n  1  failed"
    parser = argparse.ArgumentParser(prog="x", epilog=text, formatter_class=StudioHelpFormatter)
    shown = parser.format_help()
    assert "a paragraph wrapped again\n" in shown
    assert "codes:\n  0  done\n  1  failed" in shown
