"""What `studio migrate` shows: a line per database (human or JSON), the summary, the
`status` table, and the exit code for each mix of outcomes (documented in migrate.py)."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import TextIO

from db.migrations.fleet import BAD
from db.migrations.runner import DatabaseReport, Status
from server.cli.progress import Progress

__all__ = ["Output", "exit_code", "failed_targets"]

EXIT_OK, EXIT_REFUSED, EXIT_FAILED, EXIT_PARTIAL, EXIT_LOCK, EXIT_PENDING = 0, 2, 3, 4, 5, 6
RERUN = {str(s) for s in BAD | {Status.SKIPPED}}
REFUSED = frozenset({Status.REFUSED, Status.DRIFT})
CHANGED = frozenset({Status.APPLIED, Status.BASELINED, Status.REPAIRED})
# The master's (or the one database's) outcomes that end the run before any tenant.
HEAD = {
    Status.REFUSED: EXIT_REFUSED,
    Status.DRIFT: EXIT_REFUSED,
    Status.FAILED: EXIT_FAILED,
    Status.UNREACHABLE: EXIT_FAILED,
    Status.INTERRUPTED: EXIT_FAILED,
    Status.LOCK_TIMEOUT: EXIT_LOCK,
}


def exit_code(reports: list[DatabaseReport], *, fleet: bool) -> int:
    """The master (or the one database) first: if it is not fine, nothing else ran. Then the
    tenants: none broken is 0 (or 6 while pending); broken ones that were all refused, with
    nothing changed anywhere, is 2; any other mix is 4."""
    head, tenants = reports[0], reports[1:] if fleet else []
    if head.status in HEAD:
        return HEAD[head.status]
    broken = [r for r in tenants if r.status in BAD | {Status.SKIPPED}]
    if broken:
        changed = any(r.status in CHANGED for r in reports)
        refused_only = all(r.status in REFUSED for r in broken)
        return EXIT_REFUSED if refused_only and not changed else EXIT_PARTIAL
    return EXIT_PENDING if any(r.status is Status.PENDING for r in reports) else EXIT_OK


def _where(report: DatabaseReport) -> str:
    place = " @ ".join(p for p in (report.database, report.server) if p)
    return f"  [{place}]" if place and report.target.startswith("tenant ") else ""


def _human(report: DatabaseReport) -> str:
    versions = f"{report.before or 0} -> {report.after or 0}"
    line = f"{report.target:<32} {report.status!s:<12} version {versions}"
    if report.applied:
        line += f"  applied {', '.join(f'{v:04d}' for v in report.applied)}"
    if report.pending:
        line += f"  pending {', '.join(f'{v:04d}' for v in report.pending)}"
    line += f"  ({report.duration_ms} ms){_where(report)}"
    details = [*report.problems, *report.warnings, *([str(report.error)] if report.error else [])]
    return "\n".join([line, *(f"    {d}" for d in details)])


def _state(report: DatabaseReport) -> str:
    if report.status not in BAD:
        return "behind"
    if report.error is not None:
        return f"{report.status}: {report.error}"
    first = report.problems[0] if report.problems else ""
    return f"{report.status}: {first}" if first else str(report.status)


def _status_table(reports: list[DatabaseReport]) -> str:
    """status --all: which databases are behind, by how much, and which are broken (with
    what the last run recorded, or why they cannot be read)."""
    rows = [r for r in reports if r.pending or r.status in BAD]
    if not rows:
        return f"all {len(reports)} databases are up to date"
    rows.sort(key=lambda r: (r.status not in BAD, -len(r.pending), r.target))
    lines = [f"{'database':<32} {'name':<36} {'server':<22} {'version':>7} {'behind':>6}  state"]
    for r in rows:
        lines.append(
            f"{r.target:<32} {r.database:<36} {r.server:<22} {r.after or 0:>7}"
            f" {len(r.pending):>6}  {_state(r)}"
        )
    lines.append(f"{len(rows)} of {len(reports)} databases behind or broken")
    return "\n".join(lines)


def _counts(reports: list[DatabaseReport]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in reports:
        counts[str(r.status)] = counts.get(str(r.status), 0) + 1
    return counts


def _durations(reports: list[DatabaseReport]) -> dict[str, int | None]:
    """Milliseconds per database: median, p95 (nearest rank), max and their sum."""
    ms = sorted(r.duration_ms for r in reports)
    if not ms:
        return {"median": None, "p95": None, "max": None, "sum": 0}
    p95 = ms[max(0, math.ceil(len(ms) * 0.95) - 1)]
    return {"median": round(statistics.median(ms)), "p95": p95, "max": ms[-1], "sum": sum(ms)}


def summary_of(reports: list[DatabaseReport], code: int, wall_ms: int) -> dict[str, object]:
    """What a dashboard of a run needs: counts per status, the run's wall-clock time and the
    time per database (the tenants, or the one database of --database-url), and the same
    per server, so that a slow or failing server stands out."""
    tenants = [r for r in reports if r.tenant is not None] or reports
    servers: dict[str, list[DatabaseReport]] = {}
    for r in reports:
        servers.setdefault(r.server or "unknown", []).append(r)
    return {
        "databases": len(reports),
        "by_status": _counts(reports),
        "exit_code": code,
        "duration_ms": {"total": wall_ms, **_durations(tenants)},
        "servers": {
            server: {"databases": len(rs), "by_status": _counts(rs), "duration_ms": _durations(rs)}
            for server, rs in sorted(servers.items())
        },
    }


def failed_targets(report_file: Path) -> frozenset[str]:
    names = set()
    for line in report_file.read_text().splitlines():
        entry = json.loads(line)
        if "target" in entry and entry["status"] in RERUN and entry["target"] != "master":
            names.add(str(entry["target"]))
    return frozenset(names)


class Output:
    """Where reports go: JSON lines or human lines on stdout, a report file, a progress bar."""

    def __init__(self, as_json: bool, report_file: TextIO | None) -> None:
        self.json = as_json
        self.report_file = report_file
        self.progress = Progress(sys.stderr) if sys.stderr.isatty() and not as_json else None
        self.reports: list[DatabaseReport] = []
        self.started = time.monotonic()

    def plan(self, count: int) -> None:
        if self.progress:
            self.progress.start(count)

    def report(self, report: DatabaseReport) -> None:
        self.reports.append(report)
        line = json.dumps(report.as_dict())
        if self.report_file:
            self.report_file.write(line + "\n")
            self.report_file.flush()
        if self.progress:
            self.progress.advance(str(report.status))
            if report.status in BAD:
                self.progress.print(_human(report))
        else:
            print(line if self.json else _human(report), flush=True)

    def summary(self, reports: list[DatabaseReport], code: int, mode: str) -> None:
        wall_ms = round((time.monotonic() - self.started) * 1000)
        line = json.dumps({"summary": summary_of(reports, code, wall_ms)})
        counts = _counts(reports)
        if self.report_file:
            self.report_file.write(line + "\n")
            self.report_file.flush()
        if self.progress:
            self.progress.finish()
        if self.json:
            print(line, flush=True)
        elif mode == "status":
            print(_status_table(reports), flush=True)
        else:
            print(" ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)

    def abandoned(self, code: int) -> None:
        """The work did not stop within the grace after a signal: the summary of what was
        reported, with a line saying the rest was abandoned."""
        print("studio migrate: work still running after the signal was abandoned; the"
              " databases not reported roll back what they were doing when their connection"
              " closes", file=sys.stderr)  # fmt: skip
        self.summary(self.reports, code, "up")
