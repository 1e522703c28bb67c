#!/usr/bin/env python3
"""The project's task runner; needs nothing but Python 3.11+.

    python3 dev.py serve [studio serve options]   install into .venv if needed, then serve
    python3 dev.py test [pytest options]          every check: codegen freshness, ruff, mypy,
                                                  buf lint, migrate lint, then the pytest suite
    python3 dev.py generate                       regenerate generated/ from protos/
    python3 dev.py lock                           re-pin transitive dependencies (requirements.lock)
    python3 dev.py bench fleet [--tenants 1000]   fleet provisioning and migration benchmark
    python3 dev.py bench api                      the API benchmark against pgbench (bench/)
    python3 dev.py bench connect                  Connect and gRPC-Web beside gRPC (bench/)
    python3 dev.py bench summary                  a project summary on the big studio (bench/)
    python3 dev.py bench pgbouncer                calls/s and PostgreSQL connections with and
                                                  without PgBouncer, 1,000 studios (bench/)
    python3 dev.py bench move                     the write pause of `studio tenants move` (bench/)

It is the "Makefile" of the project, written in Python so that a fresh machine with only
Python needs nothing else. It uses the standard library alone: it runs before the venv exists.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PY = BIN / "python"
STAMP = VENV / ".studio-install-stamp"
LOCK = ROOT / "requirements.lock"
GENERATED_PY = ROOT / "generated" / "python"
GENERATED_TS = ROOT / "generated" / "ts"
PROTO_ROOT = ROOT / "protos"
TS_CLIENT = ROOT / "clients" / "typescript"
NPM_STAMP = TS_CLIENT / "node_modules" / ".studio-install-stamp"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    env.pop("PYTHONHOME", None)
    return env


def _run(*cmd: str | Path, check: bool = True) -> int:
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=_env(), check=check).returncode


def ensure_venv() -> None:
    """Create .venv and install the pinned dependencies when they changed since last time."""
    want = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (LOCK.read_bytes() if LOCK.exists() else b"")
    ).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print("dev: creating .venv", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print("dev: installing pinned dependencies into .venv", file=sys.stderr)
    constraints = ["-c", str(LOCK)] if LOCK.exists() else []
    _run(
        PY,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        *constraints,
        "-e",
        f"{ROOT}[dev]",
    )
    STAMP.write_text(want)


def _proto_files() -> list[str]:
    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "studio").rglob("*.proto"))
    return [*files, "buf/validate/validate.proto"]


def generate_into(out: Path) -> None:
    """Generate messages, gRPC stubs and mypy stubs for our protos (and validate.proto), and
    Connect clients and servers (protoc-gen-connectrpc, on the same google.protobuf messages)."""
    out.mkdir(parents=True, exist_ok=True)
    _run(
        PY,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        f"--plugin=protoc-gen-connectrpc={BIN / 'protoc-gen-connectrpc'}",
        f"--connectrpc_out=protobuf=google:{out}",
        *_proto_files(),
    )
    # protoc writes no __init__.py; setuptools and mypy want regular packages.
    for module in out.rglob("*.py"):
        for package in module.parents:
            if package == out:
                break
            (package / "__init__.py").touch()


def node_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def in_ci() -> bool:
    """CI must run every check: there a missing tool fails the run instead of a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def ensure_node_packages() -> bool:
    """`npm ci` the TypeScript client when its lock file changed; False without node."""
    if not node_available():
        return False
    lock = (TS_CLIENT / "package-lock.json").read_bytes()
    want = hashlib.sha256(lock).hexdigest()
    if NPM_STAMP.exists() and NPM_STAMP.read_text() == want:
        return True
    print("dev: npm ci (clients/typescript)", file=sys.stderr)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=TS_CLIENT, check=True)  # fmt: skip
    NPM_STAMP.write_text(want)
    return True


def find_program(name: str) -> str | None:
    """`name` on PATH, or in /usr/sbin where Debian puts daemons (pgbouncer) and a non-root
    PATH does not look."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def ensure_debian_package(program: str, package: str, purpose: str) -> bool:
    """Debian's `package` (which installs `program`) for `purpose`, installed with apt-get
    when missing and we may (root, as on CI); False if it is not there."""
    if find_program(program):
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    print(f"dev: installing {package} (Debian) for {purpose}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["update", "-q"], ["install", "-y", "-q", package]):
        subprocess.run(["apt-get", *command], env=env, stdout=subprocess.DEVNULL, check=False)
    return find_program(program) is not None


# Debian packages the suite needs: (program, package, the tests it is for). Outside CI a
# missing one skips its tests; in CI it fails the run.
DEBIAN_TOOLS = [
    ("chromium", "chromium", "the browser test"),
    ("pgbouncer", "pgbouncer", "the PgBouncer tests (tests/test_pgbouncer.py, -m pgbouncer)"),
]


def _googleapis_protos() -> str:
    """googleapis-common-protos ships google/rpc/*.proto beside its Python modules."""
    return subprocess.run(
        [str(PY), "-c", "import google.rpc, os; print(os.path.dirname(google.rpc.__path__[0]))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip().removesuffix("/google")  # fmt: skip


def generate_ts_into(out: Path) -> None:
    """TypeScript messages and service descriptors (protoc-gen-es), plus google.rpc's error
    details so that clients can read ErrorInfo and BadRequest."""
    out.mkdir(parents=True, exist_ok=True)
    plugin = TS_CLIENT / "node_modules" / ".bin" / "protoc-gen-es"
    _run(PY, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{_googleapis_protos()}",
         f"--plugin=protoc-gen-es={plugin}", f"--es_out={out}",
         "--es_opt=target=ts,import_extension=js",
         *_proto_files(), "google/rpc/error_details.proto")  # fmt: skip
    # ES modules, like the package that compiles them (clients/typescript).
    (out / "package.json").write_text('{\n  "type": "module"\n}\n')


def generate() -> int:
    ensure_venv()
    if GENERATED_PY.exists():
        shutil.rmtree(GENERATED_PY)
    generate_into(GENERATED_PY)
    print(f"dev: generated {GENERATED_PY.relative_to(ROOT)}", file=sys.stderr)
    if not ensure_node_packages():
        print("dev: node is not on PATH: generated/ts was NOT regenerated", file=sys.stderr)
        return 1
    if GENERATED_TS.exists():
        shutil.rmtree(GENERATED_TS)
    generate_ts_into(GENERATED_TS)
    print(f"dev: generated {GENERATED_TS.relative_to(ROOT)}", file=sys.stderr)
    return 0


def _tree_diff(a: Path, b: Path) -> list[str]:
    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    fa, fb = files(a), files(b)
    changed = [f for f in sorted(fa & fb) if not filecmp.cmp(a / f, b / f, shallow=False)]
    return sorted(fa ^ fb) + changed


def check_generated_fresh() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "python"
        generate_into(fresh)
        stale = [f"python/{f}" for f in _tree_diff(fresh, GENERATED_PY)]
        if ensure_node_packages():
            fresh_ts = Path(tmp) / "ts"
            generate_ts_into(fresh_ts)
            stale += [f"ts/{f}" for f in _tree_diff(fresh_ts, GENERATED_TS)]
        elif in_ci():
            stale.append("ts/ (node is not on PATH, and CI must check it)")
        else:
            print("dev: SKIPPED the generated/ts freshness check: node is not on PATH",
                  file=sys.stderr)  # fmt: skip
    if stale:
        print(
            "generated/ is stale; run `python3 dev.py generate` and commit. Differs:",
            *stale,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    print("generated/ is fresh", file=sys.stderr)
    return 0


def test(pytest_args: list[str]) -> int:
    ensure_venv()
    checks: list[tuple[str, list[str | Path]]] = [
        ("ruff", [BIN / "ruff", "check", "."]),
        ("ruff format", [BIN / "ruff", "format", "--check", "--quiet", "."]),
        ("mypy --strict", [BIN / "mypy"]),
        ("buf lint", [BIN / "buf", "lint"]),
        # squawk and our rules over the migration files, as operators run it before a fleet
        ("migrate lint", [BIN / "studio", "migrate", "lint", ROOT / "migrations_sql"]),
    ]
    failed = []
    if check_generated_fresh() != 0:
        failed.append("generated freshness")
    for name, cmd in checks:
        print(f"dev: {name}", file=sys.stderr, flush=True)
        if _run(*cmd, check=False) != 0:
            failed.append(name)
    if not node_available():
        if in_ci():
            print("dev: node is not on PATH, and CI must run the TypeScript client suite",
                  file=sys.stderr)  # fmt: skip
            failed.append("node")
        else:
            print("dev: node is not on PATH: the TypeScript client suite will be SKIPPED",
                  file=sys.stderr)  # fmt: skip
    for program, package, purpose in DEBIAN_TOOLS:
        if ensure_debian_package(program, package, purpose):
            continue
        if in_ci():
            print(f"dev: {program} is not installed, and CI must run {purpose}",
                  file=sys.stderr)  # fmt: skip
            failed.append(program)
        else:
            print(f"dev: {program} is not installed: {purpose} will be SKIPPED"
                  f" (apt-get install {package})", file=sys.stderr)  # fmt: skip
    rc = _run(PY, "-m", "pytest", *pytest_args, check=False)
    if failed:
        print(f"dev: FAILED checks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return rc


def lock() -> int:
    """Freeze the full resolved set (transitive included) as constraints for the next install."""
    ensure_venv()
    out = subprocess.run(
        [str(PY), "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout
    LOCK.write_text("# Generated by `python3 dev.py lock`; used as pip constraints.\n" + out)
    STAMP.unlink(missing_ok=True)
    return 0


BENCHES = {
    "fleet": "bench.fleet_migrate",
    "api": "bench.api_bench",
    "connect": "bench.connect_bench",
    "summary": "bench.summary_bench",
    "pgbouncer": "bench.pgbouncer_bench",
    "move": "bench.move_bench",
}


def exec_studio(args: list[str]) -> int:
    ensure_venv()
    os.execve(BIN / "studio", [str(BIN / "studio"), *args], _env())


def bench(args: list[str]) -> int:
    ensure_venv()
    if not args or args[0] not in BENCHES:
        print(f"dev: bench takes one of {sorted(BENCHES)}", file=sys.stderr)
        return 2
    return _run(PY, "-m", BENCHES[args[0]], *args[1:], check=False)


COMMANDS = {
    "serve": lambda rest: exec_studio(["serve", *rest]),
    "studio": exec_studio,
    "test": test,
    "generate": lambda _rest: generate(),
    "bench": bench,
    "lock": lambda _rest: lock(),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"dev: unknown command {argv[0]!r}\n{__doc__}", file=sys.stderr)
        return 2
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
