"""What `count_call` (server/metrics.py) costs one call, in the process, without the noise of a
whole server: the middleware around a procedure that returns at once, against a middleware
that only passes the call on. Both modes of prometheus_client: one process (a lock per value)
and --workers (PROMETHEUS_MULTIPROC_DIR set: each value written into an mmapped file).

    .venv/bin/python -m bench.metrics_cost [--calls 200000]

A benchmark, not a test: it measures, asserts nothing. `bench api --metrics` measures the
same end to end, over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from google.protobuf.empty_pb2 import Empty

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from server.pipeline import Call, Next

REPEATS = 5


async def _answer(_call: Call) -> Message:
    return Empty()


async def _pass_on(call: Call, next_: Next) -> Message:
    return await next_(call)


async def _measure(calls: int) -> tuple[float, float]:
    """(microseconds per call with count_call, without), the best of REPEATS."""
    # Imported here: prometheus_client picks its mode from the environment when imported.
    from server.metrics import Metrics
    from server.pipeline import Call
    from server.routers import ROUTERS

    procedure = next(iter(ROUTERS[0].all()))
    call = Call(procedure.path, procedure, b"", None, (), "id")  # type: ignore[arg-type]
    metrics = Metrics()
    timings: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(REPEATS):
        for name, middleware in (("on", metrics.count_call), ("off", _pass_on)):
            started = time.process_time()
            for _ in range(calls):
                await middleware(call, _answer)
            timings[name].append((time.process_time() - started) / calls * 1e6)
    return min(timings["on"]), min(timings["off"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        on, off = asyncio.run(_measure(args.calls))
        print(f"{on:.2f} {off:.2f}")
        return
    for mode in ("one process", "--workers (multiprocess files)"):
        env = dict(os.environ)
        with tempfile.TemporaryDirectory(prefix="metrics-cost-") as files:
            if mode.startswith("--workers"):
                env["PROMETHEUS_MULTIPROC_DIR"] = files
            out = subprocess.run(
                [sys.executable, "-m", "bench.metrics_cost", "--child", "--calls", str(args.calls)],
                env=env, capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
        on, off = float(out[0]), float(out[1])
        print(f"{mode}: {on:.2f} us per call with count_call, {off:.2f} us passing the call on:"
              f" the metrics cost {on - off:.2f} us of CPU per call")  # fmt: skip


if __name__ == "__main__":
    main()
