"""The scrape endpoint of `studio serve --metrics-port`: a process's own metrics, or, for a
`--workers N` supervisor, the sum of its workers' in one scrape.

With workers, each worker's prometheus_client runs in multiprocess mode: it writes its values
into a file of its own (mmapped, no system call per update) in a private directory the
supervisor made and names in PROMETHEUS_MULTIPROC_DIR; the supervisor reads and adds them up
at each scrape, so the workers never serve or wait for a scrape. Counters of a worker that
died stay (totals never go back); its gauges are dropped. The directory goes when the
supervisor ends. (The other way, the supervisor scraping each worker over HTTP, costs a
server thread per worker and a scrape that fails when a worker is busy or restarting.)
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.samples import Sample

from server.listen_port import PortInUse
from server.metrics import dropped_log_lines

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

__all__ = ["MULTIPROC_ENV", "MetricsEndpoint", "WorkersMetrics", "serve_metrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsEndpoint:
    """GET /metrics over plain HTTP, from a thread of its own (not the event loop's)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> MetricsEndpoint:
    """Serve `registry` on host:port (0: any free port); a port in use raises PortInUse."""
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port) from exc
        raise
    return MetricsEndpoint(server, thread)


class _Workers:
    """The workers' files summed; the supervisor's own dropped log lines added to theirs
    (the workers' lines reach stderr through the supervisor's log)."""

    def __init__(self, path: str) -> None:
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            if family.name == "studio_log_lines_dropped":
                own = dropped_log_lines()
                family.samples = [_plus(s, own) if s.name.endswith("_total") else s
                                  for s in family.samples]  # fmt: skip
            yield family


def _plus(sample: Sample, amount: float) -> Sample:
    return sample._replace(value=sample.value + amount)


class WorkersMetrics:
    """What a --workers supervisor holds for its workers' metrics: their directory, and the
    registry that sums them."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="studio-metrics-")
        self.registry = CollectorRegistry()
        self.registry.register(_Workers(self.path))

    def worker_exited(self, pid: int) -> None:
        """A dead worker's calls in flight and pools are no longer anyone's."""
        mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
