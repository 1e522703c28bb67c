"""Where a server's CPU goes, from py-spy's collapsed stacks (`py-spy record --format raw`).

Each sample (taken only from the thread holding the GIL, `--gil`) is charged to the layer of
its innermost frame: who was running. SQLAlchemy runs its statements in greenlets, whose stacks
py-spy sees cut at the greenlet, so charging by caller would mislead; by layer it does not.

    python3 -m bench.profile_summary profile.txt 250
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

__all__ = ["summarise"]

# (layer, what its frames' file names start with), first match wins
LAYERS = (
    ("gRPC (grpc.aio)", "(grpc/"),
    ("SQLAlchemy", "(sqlalchemy/"),
    ("psycopg", "(psycopg"),
    ("protovalidate", "(protovalidate/"),
    ("protobuf", "(google/protobuf/"),
    ("protobuf", "(protobuf/"),
    ("prometheus_client (--metrics-port)", "(prometheus_client/"),
    ("logging and json", "(logging/"),
    ("logging and json", "(json/"),
    ("our code (server/, db/)", "(server/"),
    ("our code (server/, db/)", "(db/"),
)
# Callbacks the event loop runs that have no Python frame of their own: grpc.aio's Cython
# (the server's call handling) and C-implemented tasks. py-spy sees only the loop's frame.
LOOP_CALLBACK = "Handle._run (asyncio/events.py"
# On uvloop the loop itself is C: the innermost Python frame of its callbacks (grpc.aio's
# Cython, the loop's own work) is the frame that started the loop.
LOOP_STARTED = ("Runner.run (asyncio/runners.py", "run (asyncio/runners.py")
NO_PYTHON_FRAME = "native code (no Python frame)"


def _layer(stack: list[str]) -> str:
    leaf = stack[-1]
    if len(stack) == 1:  # only the process: the thread was in C code
        return NO_PYTHON_FRAME
    if leaf.startswith(LOOP_CALLBACK) or leaf.startswith(LOOP_STARTED):
        return "event-loop callbacks in C/Cython (mostly grpc.aio's call handling)"
    for name, fragment in LAYERS:
        if fragment in leaf:
            return name
    if "(asyncio/" in leaf or "(selectors.py" in leaf:
        return "asyncio event loop"
    return "other (stdlib, interpreter)"


def summarise(collapsed: str, *, rate: float, cpu_seconds: float | None = None) -> str:
    """Shares of the samples taken while a thread held the GIL (py-spy --gil), and, given the
    process's CPU time over the recording, the share spent outside the GIL (grpc's C core,
    system calls)."""
    layers: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        layers[_layer(stack.split(";"))] += count
    if total == 0:
        return "no samples\n"
    gil_seconds = total / rate
    lines = []
    if cpu_seconds is not None:
        outside = max(0.0, cpu_seconds - gil_seconds)
        lines += [
            f"CPU {cpu_seconds:.2f} s, of which holding the GIL {gil_seconds:.2f} s"
            f" ({total} samples at {rate:g} Hz) and outside it {outside:.2f} s"
            f" ({outside / cpu_seconds:.0%}: grpc's C core, system calls).",
            "",
        ]
    lines += ["| with the GIL, in | share |", "|---|---:|"]
    lines += [f"| {name} | {n / total:.0%} |" for name, n in layers.most_common()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]).read_text(), rate=float(sys.argv[2])))
