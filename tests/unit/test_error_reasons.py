"""studio.v1.ErrorReason is the one list of error reasons: the server raises no other, and
docs/errors.md documents exactly these, each with the gRPC code the proto gives it. (The
TypeScript `Reason` type is the enum's names, so the compiler keeps that one in step.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from server.errors import REASONS, ApiError, NotFound
from server.standard_methods import not_found

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "protos" / "studio" / "v1" / "error_reason.proto"
DOCS = ROOT / "docs" / "errors.md"
GRPC_CODES = re.compile(r"^([A-Z_]+(?: or [A-Z_]+)*):")


def _proto_codes() -> dict[str, str]:
    """reason -> the code(s) its comment in the proto starts with."""
    codes, comment = {}, []
    for line in PROTO.read_text().split("enum ErrorReason", 1)[1].splitlines()[1:]:
        text = line.strip()
        if text.startswith("// --"):
            comment = []
        elif text.startswith("//"):
            comment.append(text[2:].strip())
        elif found := re.match(r"ERROR_REASON_(\w+) = \d+;", text):
            if found.group(1) != "UNSPECIFIED":
                code = GRPC_CODES.match(" ".join(comment))
                assert code, f"{found.group(1)}: its comment does not start with its gRPC code"
                codes[found.group(1)] = code.group(1)
            comment = []
    return codes


def _documented() -> dict[str, str]:
    """reason -> code, from the table of docs/errors.md."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([A-Z_ or]+?) \|", DOCS.read_text(), re.MULTILINE)
    return dict(rows)


def test_every_reason_is_documented_with_its_code_and_nothing_else() -> None:
    assert set(_proto_codes()) == REASONS
    assert _documented() == _proto_codes()


def _literal_reasons() -> set[str]:
    """Reasons written as literals where errors are made: an UPPER_SNAKE argument of an
    ApiError class, or of the error tables' Rule and Reference."""
    makers = {cls.__name__ for cls in _subclasses(ApiError)} | {"ApiError", "Rule", "Reference"}
    found = set()
    for path in [*(ROOT / "server").rglob("*.py"), *(ROOT / "db").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name not in makers:
                continue
            found |= {
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9_]+", arg.value)
            }
    return found


def _subclasses(cls: type) -> set[type]:
    direct = set(cls.__subclasses__())
    return direct.union(*(_subclasses(c) for c in direct))


def test_every_reason_the_code_raises_is_declared() -> None:
    """Those written out; the ones derived (<KIND>_NOT_FOUND, the foreign key tables) are
    checked where they are made (below, and tests/unit/test_error_mapping.py)."""
    literals = _literal_reasons()
    assert len(literals) > 20  # the scan sees the error tables, middleware and routers
    assert literals - REASONS == set()


@pytest.mark.parametrize(
    "kind", ["client", "room", "project", "session", "track", "task_type", "time_entry"]
)
def test_every_resource_has_its_not_found_reason(kind: str) -> None:
    error = not_found(kind, 7)
    assert isinstance(error, NotFound)
    assert error.reason in REASONS


def test_an_undeclared_reason_is_refused_where_it_is_made() -> None:
    with pytest.raises(ValueError, match=r"not a value of studio\.v1\.ErrorReason"):
        NotFound("NO_SUCH_REASON", "x")
