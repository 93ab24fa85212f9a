"""After the last byte of an upload: judge the original at once, then queue the ladder job.

``Ingest.start`` validates the stored original right away in this process (a probe takes a
fraction of a second, so an H.264/AAC MP4 becomes ``playable`` seconds after its upload) and
then submits the job that transcodes the ladder. ``Ingest.run`` is the gateway's share of the
work: ``jobs.gateway_workers`` consumers of the queue, and a sweep that submits again what a
restart or a lost submission left unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from backends.blocking import BlockingRunner
from backends.catalog import Catalog, Rendition, VideoChanges, processing
from backends.catalog.records import Video
from backends.errors import BadMedia, ClipSyncError
from backends.jobs import Busy, Job, JobQueue, MemoryQueue
from backends.storage import Storage, read_blocks
from packager import probe

log = logging.getLogger("clipsync.ingest")
# A video unfinished and untouched this long lost its job (Redis queue): submit it again.
LOST_AFTER = 3600.0


@contextlib.asynccontextmanager
async def local_copy(storage: Storage, path: str, size: int) -> AsyncIterator[str]:
    """A local file with the object's bytes: the library's own file when it is a folder."""
    local = getattr(storage, "local_path", None)
    if callable(local):
        yield str(local(path))
        return
    handle, name = tempfile.mkstemp(prefix="clipsync-original-")
    try:
        with os.fdopen(handle, "wb") as out:
            async for block in read_blocks(storage, path, size):
                out.write(block)
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


async def judge(
    runner: BlockingRunner, path: str, video: Video
) -> tuple[VideoChanges, list[Rendition]]:
    """What the original at ``path`` makes of ``video``: failed with the reason, playable as
    a single rendition (H.264/AAC MP4), or processing (waiting for the ladder)."""
    try:
        facts = await runner.run(probe.probe, path)
        probe.check(facts)
    except BadMedia as exc:
        return VideoChanges(status="failed", failure_reason=str(exc)), []
    duration_ms = round(facts.duration * 1000)
    if not probe.plays_as_is(facts) or video.original_path is None:
        changes = VideoChanges(
            status="processing", duration_ms=duration_ms, width=facts.width, height=facts.height
        )
        return changes, []
    size = video.original_size or 0
    original = Rendition(
        name="original",
        path=video.original_path,
        bandwidth=max(1, round(size * 8 / facts.duration)),
        width=facts.width,
        height=facts.height,
    )
    changes = VideoChanges(
        status="playable", duration_ms=duration_ms, width=facts.width, height=facts.height
    )
    return changes, [original]


def timed_handler(
    handle: Callable[[Job], Awaitable[None]], timed: Callable[[str, float], object]
) -> Callable[[Job], Awaitable[None]]:
    """``handle`` telling ``timed`` each attempt's outcome ("done", "failed") and duration."""

    async def handled(job: Job) -> None:
        start = time.perf_counter()
        outcome = "failed"
        try:
            await handle(job)
            outcome = "done"
        except Busy:
            outcome = ""  # someone else has it: not an attempt
            raise
        finally:
            if outcome:
                timed(outcome, time.perf_counter() - start)

    return handled


class Validator(Protocol):
    async def validate(self, video_id: str) -> Video | None: ...

    async def handle(self, job: Job) -> None: ...

    async def give_up(self, job: Job, reason: str) -> None: ...


class Ingest:
    def __init__(
        self,
        queue: JobQueue,
        catalog: Catalog,
        pipeline: Validator,
        workers: int,
        timed: Callable[[str, float], object] = lambda outcome, seconds: None,
    ) -> None:
        self.timed = timed  # metrics: each job attempt's outcome and time
        self.queue = queue
        self.catalog = catalog
        self.pipeline = pipeline
        self.workers = workers
        self._starting: set[asyncio.Task[None]] = set()

    def start(self, video_id: str) -> None:
        """Called when an upload completes (the upload's answer does not wait)."""
        task = asyncio.create_task(self._start(video_id))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start(self, video_id: str) -> None:
        try:
            video = await self.pipeline.validate(video_id)
        except ClipSyncError as exc:  # storage or catalog away: the job validates later
            log.warning("validating video %s failed: %s", video_id, exc)
            video = await self.catalog.get_video(video_id)
        except Exception:
            log.exception("validating video %s failed", video_id)
            return
        if video is None or video.status == "failed":
            return
        await self.submit(video_id)

    async def submit(self, video_id: str) -> None:
        for attempt in range(6):  # the queue (Redis) may be away for a moment
            try:
                await self.queue.submit(Job(video_id=video_id))
                return
            except ClipSyncError as exc:
                log.warning("queueing video %s failed: %s", video_id, exc)
                await asyncio.sleep(min(30.0, 2.0**attempt))
        log.error("video %s not queued; the next sweep will try again", video_id)

    async def settle(self) -> None:
        """Wait for the validations under way (tests, shutdown)."""
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)

    async def sweep(self, older_than: float) -> int:
        """Submit again the unfinished videos nobody works on; the count submitted."""
        lost = await processing.unfinished(self.catalog, older_than)
        for video_id in lost:
            await processing.touch(self.catalog, video_id)  # one resubmission per period
            await self.submit(video_id)
        return len(lost)

    async def run(self, sweep_every: float) -> None:
        """The gateway's workers and sweeps, until cancelled."""
        async with asyncio.TaskGroup() as group:
            if self.workers:
                handle = timed_handler(self.pipeline.handle, self.timed)
                group.create_task(self.queue.work(handle, self.pipeline.give_up, self.workers))
            group.create_task(self._sweeping(sweep_every))

    async def _sweeping(self, every: float) -> None:
        # An in-process queue starts empty: every unfinished video is this process's to redo.
        memory = isinstance(self.queue, MemoryQueue)
        first = True
        while True:
            try:
                await self.sweep(0.0 if memory and first else LOST_AFTER)
            except ClipSyncError as exc:
                log.warning("sweep of unfinished videos failed: %s", exc)
            first = False
            await asyncio.sleep(every)
