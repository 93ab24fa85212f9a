"""The gateway's Prometheus metrics, counted across every granian worker of one server.

A scrape reaches one worker. With ``server.metrics_dir`` set (``clipsync serve`` sets it), every
worker writes its metrics to prometheus_client's multiprocess files in that folder and a scrape
reads them all. Collectors that read plain counters at scrape time (the cache tiers') cannot
write files, so each worker mirrors them into multiprocess counters and gauges every second and
at each scrape: a scrape is at most a second behind the other workers' caches. Without a folder
(in-process apps, tests) the same metrics live in one registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from backends.jobs.base import JobQueue

# Request times from a cached segment (well under a millisecond) to a cold packaging or an
# upload (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
MIRROR_INTERVAL = 1.0
QUEUE_INTERVAL = 5.0  # seconds between reads of the job queue's depth


def use_folder(folder: str) -> None:
    """Make the metrics this process creates from now on write to ``folder``'s files.

    prometheus_client picks its value class from PROMETHEUS_MULTIPROC_DIR when it is imported;
    granian forks its workers from a CLI that imported it already, so each worker switches here,
    before creating any metric."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def prepare_folder(folder: str) -> None:
    """An empty metrics folder for a new server run (old files would add a past run's counts)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    for name in glob.glob(os.path.join(folder, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _process_start() -> float | None:
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            if sample.name == "process_start_time_seconds":
                return float(sample.value)
    return None  # not Linux: no /proc


class GatewayMetrics:
    """What the gateway counts. ``folder``: the multiprocess folder, or "" for one process."""

    def __init__(self, folder: str = "") -> None:
        self.folder = folder
        if folder:
            use_folder(folder)
        # No *_created series: multiprocess mode has none, and one output shape is simpler.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        # Multiprocess metrics are read from the files, not from a registry of this process.
        own = None if folder else CollectorRegistry()
        self.own = own
        self.requests = Counter(
            "clipsync_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=own,
        )
        self.duration = Histogram(
            "clipsync_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.sent = Counter(
            "clipsync_http_response_bytes",
            "Response body bytes sent, by route template",
            ["route"],
            registry=own,
        )
        self.startup = Gauge(
            "clipsync_startup_seconds",
            "Seconds from this worker process's start until it was ready to serve",
            multiprocess_mode="max",
            registry=own,
        )
        self.packaging = Histogram(
            "clipsync_packaging_seconds",
            "Time to package one segment from storage (cache misses only), by format",
            ["format"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.uploads = Gauge(
            "clipsync_uploads_in_progress",
            "Upload requests (tus PATCH or form) streaming right now",
            multiprocess_mode="livesum",
            registry=own,
        )
        self.logins_failed = Counter(
            "clipsync_logins_failed",
            "Sign-ins refused: wrong password, unknown email, disabled or locked account",
            registry=own,
        )
        self.queue_depth = Gauge(
            "clipsync_jobs_queue_depth",
            "Processing jobs by state (waiting, running, delayed for a retry, dead)",
            ["state"],
            multiprocess_mode="mostrecent",
            registry=own,
        )
        self.job_duration = Histogram(
            "clipsync_job_duration_seconds",
            "Time of each processing job attempt run by this process, by outcome",
            ["outcome"],
            buckets=JOB_BUCKETS,
            registry=own,
        )
        self.storage_time = Histogram(
            "clipsync_storage_request_seconds",
            "Time of each call to a remote store (attempts, retries included), by backend and op",
            ["backend", "op"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.storage_errors = Counter(
            "clipsync_storage_errors",
            "Calls to a remote store that failed (timeouts included; not-found answers excluded)",
            ["backend", "op", "failure"],
            registry=own,
        )
        self._mirrors: list[_Mirror] = []
        self._queue: JobQueue | None = None

    def histogram(self, name: str, documentation: str, labels: list[str], buckets: Any) -> Any:
        """Another module's histogram, kept where this process keeps its metrics."""
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.own)

    def add_collector(self, collector: Collector) -> None:
        """A collector that reads plain counters at scrape time (mirrored across workers)."""
        if self.own is not None:
            self.own.register(collector)
        else:
            self._mirrors.append(_Mirror(collector))

    def uploading(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` with its body-carrying requests (POST, PATCH) counted while they run."""

        async def counted(request: Request) -> Response:
            if request.method not in ("POST", "PATCH"):
                return await handler(request)
            with self.uploads.track_inprogress():
                return await handler(request)

        return counted

    def storage_call(self, backend: str) -> Callable[[str, float, str | None], None]:
        def seen(op: str, seconds: float, failure: str | None) -> None:
            self.storage_time.labels(backend, op).observe(seconds)
            if failure is not None:
                self.storage_errors.labels(backend, op, failure).inc()

        return seen

    def watch_queue(self, queue: JobQueue) -> None:
        self._queue = queue

    def started(self) -> None:
        """The worker is ready: record how long it took since the process began."""
        began = _process_start()
        if began is not None:
            self.startup.set(max(0.0, time.time() - began))

    def observe(self, route: str, method: str, status: int, seconds: float, sent: int) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)
        if sent:
            self.sent.labels(route).inc(sent)

    def mirror(self) -> None:
        for item in self._mirrors:
            item.sync()

    async def refresh_forever(self) -> None:
        """Until cancelled: the cache counters mirrored every second, the queue's depth read
        every few. Scrapes never wait for Redis: they show the last values read."""
        rounds = 0
        while True:
            self.mirror()
            if rounds % round(QUEUE_INTERVAL / MIRROR_INTERVAL) == 0:
                await self.read_queue()
            rounds += 1
            await asyncio.sleep(MIRROR_INTERVAL)

    async def read_queue(self) -> None:
        if self._queue is None:
            return
        # Shielded: a read cancelled midway (at shutdown) could leave a Redis Cluster handshake
        # half done and its sockets open; the read finishes by itself instead.
        reading = asyncio.ensure_future(self._queue.depth())
        reading.add_done_callback(_ignore_failure)
        try:
            depth = await asyncio.shield(reading)
        except Exception:  # the queue's Redis away: the gauges keep their last values
            return
        for state in ("waiting", "running", "delayed", "dead"):
            self.queue_depth.labels(state).set(getattr(depth, state))

    def job_time(self, outcome: str, seconds: float) -> None:
        self.job_duration.labels(outcome).observe(seconds)

    async def serve_alone(self, host: str, port: int, refresh: float = 5.0) -> None:
        """A metrics endpoint of its own (``clipsync worker``), until cancelled; the queue's
        depth is read every ``refresh`` seconds."""
        assert self.own is not None, "a process of its own keeps its metrics in memory"
        server, thread = start_http_server(port, addr=host, registry=self.own)
        try:
            while True:
                await self.read_queue()
                await asyncio.sleep(refresh)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    def close(self) -> None:
        """This process leaves: its live gauges stop counting."""
        if self.folder:
            self.mirror()
            multiprocess.mark_process_dead(os.getpid(), self.folder)  # type: ignore[no-untyped-call]

    def text(self) -> bytes:
        if self.own is not None:
            return generate_latest(self.own)
        self.mirror()
        _forget_dead_processes(self.folder)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.folder)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def page(self) -> Callable[[Request], Awaitable[Response]]:
        async def page(request: Request) -> Response:
            return Response(
                self.text(), headers={"cache-control": "no-store"}, media_type=CONTENT_TYPE_LATEST
            )

        return page


def _ignore_failure(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished read's error, so nobody is told it was never looked at."""
    if not task.cancelled():
        task.exception()


def _forget_dead_processes(folder: str) -> None:
    """A worker that crashed cannot mark itself dead: its live gauges would count forever."""
    for name in glob.glob(os.path.join(folder, "gauge_live*_*.db")):
        pid = int(name.rsplit("_", 1)[1].split(".")[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


class _Mirror:
    """A scrape-time collector copied into multiprocess counters (by increments) and gauges."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, Gauge] = {}
        self.last: dict[tuple[str, tuple[str, ...]], float] = {}

    def sync(self) -> None:
        for family in self.collector.collect():
            if family.type == "counter":
                self._counter(family.name, family.documentation, family.samples)
            elif family.type == "gauge":
                self._gauge(family.name, family.documentation, family.samples)

    def _counter(self, name: str, doc: str, samples: Iterable[Any]) -> None:
        for sample in samples:
            if not sample.name.endswith("_total"):
                continue
            labels = tuple(sample.labels)
            metric = self.counters.get(name)
            if metric is None:
                metric = self.counters[name] = Counter(name, doc, list(labels), registry=None)
            key = (name, tuple(sample.labels.values()))
            delta = sample.value - self.last.get(key, 0.0)
            if delta > 0:
                (metric.labels(*key[1]) if labels else metric).inc(delta)
                self.last[key] = sample.value

    def _gauge(self, name: str, doc: str, samples: Iterable[Any]) -> None:
        for sample in samples:
            labels = tuple(sample.labels)
            metric = self.gauges.get(name)
            if metric is None:
                metric = self.gauges[name] = Gauge(
                    name, doc, list(labels), multiprocess_mode="livesum", registry=None
                )
            (metric.labels(*sample.labels.values()) if labels else metric).set(sample.value)
