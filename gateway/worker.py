"""``clipsync worker``: a process that takes processing jobs from the Redis queue.

Many may run at once, on any machine that reaches the same storage, catalog and Redis. Each
runs ``jobs.worker_concurrency`` jobs at a time (a transcode already uses every core). On
SIGTERM or SIGINT it stops taking jobs, ends the transcodes under way at their next frame and
hands their jobs back to the queue, so another worker starts them at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from backends.blocking import BlockingRunner
from backends.cache import open_cache
from backends.catalog import Catalog, engines
from backends.errors import ClipSyncError
from backends.jobs import MemoryQueue, open_queue
from backends.storage import open_storage
from conf.settings import Settings, SettingsError
from gateway.ingest import timed_handler
from gateway.library import Library
from gateway.metrics import GatewayMetrics
from gateway.notices import OwnerNotices, notifier_for, public_url
from gateway.processing import pipeline_for
from gateway.webhooks import Webhooks

log = logging.getLogger("clipsync.worker")


async def run(settings: Settings) -> None:
    concurrency = settings.jobs.worker_concurrency
    try:
        queue = open_queue(settings.jobs, settings.cache.redis_url, concurrency)
    except ValueError as exc:  # no or a bad Redis URL
        raise SettingsError(f"jobs.redis_url: {exc}") from None
    if isinstance(queue, MemoryQueue):
        raise SettingsError(
            "clipsync worker takes jobs from the Redis queue: set jobs.redis_url or "
            "cache.redis_url (with jobs.queue 'auto' or 'redis'); without Redis the gateway "
            "runs the jobs itself (jobs.gateway_workers)"
        )
    runner = BlockingRunner(settings.server.blocking_threads)
    try:
        storage = open_storage(settings.storage, runner)
    except (ClipSyncError, ValueError) as exc:
        await queue.close()
        raise SettingsError(f"storage.library: {exc}") from None
    catalog = Catalog(engines.create(settings.catalog.url, settings.catalog.pool_size))
    cache = open_cache(settings.cache)  # to tell every gateway what changed (purges)
    library = Library(settings, storage, runner, cache)

    hooks = Webhooks(catalog, settings.webhooks)
    notifier = notifier_for(settings)
    notices = OwnerNotices(catalog, hooks, notifier, public_url(settings))
    pipeline = pipeline_for(settings, catalog, storage, runner, library, notices)
    metrics = GatewayMetrics()
    metrics.watch_queue(queue)
    handle = timed_handler(pipeline.handle, metrics.job_time)
    working = asyncio.create_task(queue.work(handle, pipeline.give_up, concurrency))
    delivering = asyncio.create_task(hooks.run())  # the webhooks of our events, at once
    port = settings.jobs.metrics_port
    scrapes = asyncio.create_task(metrics.serve_alone(settings.server.host, port)) if port else None
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("stopping: jobs under way go back to the queue")
        pipeline.stop.set()
        working.cancel()
        delivering.cancel()
        if scrapes is not None:
            scrapes.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    log.info("clipsync worker %s: %d job(s) at a time", pipeline.owner, concurrency)
    if port:
        log.info("metrics at http://%s:%d/metrics", settings.server.host, port)
    try:
        await asyncio.gather(
            working, delivering, *([scrapes] if scrapes else []), return_exceptions=True
        )
    finally:
        await queue.close()
        await hooks.close()
        await notifier.close()
        await cache.close()
        await catalog.close()
        await storage.close()
