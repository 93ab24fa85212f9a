"""The work on one uploaded video: validate, transcode the ladder, make thumbnails, publish.

``Pipeline.handle`` is what a queue delivers a job to. It is idempotent: it reads the video's
state from the catalog, skips what is done, and overwrites the same storage objects (each write
atomic) — so a job delivered twice, or taken over from a dead worker, ends with one complete
set of outputs. One worker at a time works on a video (a lease in the catalog, renewed while
it works); a second delivery meanwhile is told to come back later (``Busy``).

Status: ``uploaded`` -> (validation) ``failed`` | ``playable`` (an H.264/AAC MP4 original is
packaged just in time) | ``processing`` -> (ladder) ``ready``. Bad media fails the video with
the reason and keeps the original; anything else (storage away, a crash) is retried by the
queue and, after the last attempt, fails the video with the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

from backends import child
from backends.blocking import BlockingRunner
from backends.catalog import Catalog, Rendition, VideoChanges, processing
from backends.catalog.records import Video, storage_folder
from backends.errors import BadMedia
from backends.jobs import Busy, Job
from backends.storage import Storage
from conf.settings import IngestSettings, Settings
from gateway.ingest import judge, local_copy
from gateway.library import Library
from gateway.thumbnails import stored_path
from packager import ladder, thumbnails

log = logging.getLogger("clipsync.processing")
PROGRESS_EVERY = 1.0  # seconds between progress writes to the catalog
# Share of the progress bar each stage fills (validation, ladder, thumbnails, storing).
THUMBNAIL_HEIGHT = 360  # thumbnails come from the smallest rung at least this tall
STAGES = {"validate": (0, 2), "ladder": (2, 90), "thumbnails": (90, 94), "store": (94, 99)}


class Stopped(Exception):
    """The worker is shutting down: the job goes back to the queue."""


class Announcer(Protocol):
    async def announce(self, video: Video, event: str) -> None:
        """Tell the owner (webhooks, email): ``video.playable``, ``video.ready``,
        ``video.failed``. Must not raise."""
        ...


class Silent:
    async def announce(self, video: Video, event: str) -> None:
        return None


def ladder_config(ingest: IngestSettings) -> ladder.LadderConfig:
    rungs = []
    for spec in ingest.ladder:
        name, height, kbits = spec.split(":")
        rungs.append(ladder.Rung(name, int(height), int(kbits) * 1000))
    return ladder.LadderConfig(rungs=tuple(rungs), preset=ingest.x264_preset)


class Progress:
    """Percent done, reported by the transcode (its child process's reports replayed on the
    event loop), written to the catalog now and then (a write per frame would be a write per
    millisecond)."""

    def __init__(self, catalog: Catalog, video_id: str, stop: threading.Event) -> None:
        self.catalog = catalog
        self.video_id = video_id
        self.stop = stop
        self.percent = 0
        self._written = -1

    def stage(self, name: str, fraction: float) -> None:
        """Raises Stopped when shutting down (the transcode is then stopped too)."""
        if self.stop.is_set():
            raise Stopped
        low, high = STAGES[name]
        self.percent = max(self.percent, int(low + (high - low) * min(1.0, max(0.0, fraction))))

    async def flush(self) -> None:
        if self.percent != self._written:
            self._written = self.percent
            await processing.set_progress(self.catalog, self.video_id, self.percent)

    async def keep_writing(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            with contextlib.suppress(Exception):  # progress is a courtesy: never fail the job
                await self.flush()


class Pipeline:
    def __init__(
        self,
        catalog: Catalog,
        storage: Storage,
        runner: BlockingRunner,
        ingest: IngestSettings,
        announcer: Announcer | None = None,
        on_published: Callable[[str], Awaitable[None]] | None = None,
        lease: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.storage = storage
        self.runner = runner
        self.ingest = ingest
        self.thumbnail_interval = ingest.thumbnail_interval
        self.announcer = announcer or Silent()
        self.on_published = on_published
        # Our hold on a video (renewed every third of it): as long as the queue waits before
        # it hands a silent worker's job to another, so the two agree on who is dead.
        self.lease = lease
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stop = threading.Event()  # set at shutdown: transcodes end at their next frame

    async def _set(self, video_id: str, changes: VideoChanges) -> Video | None:
        return await self.catalog.update_video(video_id, changes)

    async def validate(self, video_id: str) -> Video | None:
        """Judge an ``uploaded`` video now (the gateway does this right after the last byte,
        so an H.264 original plays within a second); the video as it stands after."""
        video = await self.catalog.get_video(video_id)
        if video is None or video.status != "uploaded" or video.original_path is None:
            return video
        async with local_copy(self.storage, video.original_path, video.original_size or 0) as path:
            changes, renditions = await judge(self.runner, path, video)
        if renditions:
            await self.catalog.set_renditions(video_id, renditions)
        after = await self._set(video_id, changes)
        if after is not None and after.status in ("playable", "failed"):
            await self._published(video_id)
            await self.announcer.announce(after, f"video.{after.status}")
        return after

    async def _published(self, video_id: str) -> None:
        if self.on_published is not None:
            with contextlib.suppress(Exception):
                await self.on_published(video_id)

    async def handle(self, job: Job) -> None:
        video = await self.catalog.get_video(job.video_id)
        if not _needs_work(video):
            return  # deleted, done, failed, or never uploaded: nothing to do
        if not await processing.claim(self.catalog, job.video_id, self.owner, self.lease):
            raise Busy(self.lease / 2)
        holding = asyncio.create_task(self._hold(job.video_id))
        try:
            await self._process(job.video_id)
        except Stopped:
            raise Busy(1.0) from None  # shutting down: not an attempt; another worker goes on
        finally:
            holding.cancel()
            with contextlib.suppress(Exception):
                await processing.release(self.catalog, job.video_id, self.owner)

    async def _hold(self, video_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(Exception):  # a missed renewal: the next one may land
                await processing.renew(self.catalog, video_id, self.owner, self.lease)

    async def _process(self, video_id: str) -> None:
        progress = Progress(self.catalog, video_id, self.stop)
        writing = asyncio.create_task(progress.keep_writing())
        try:
            video = await self.validate(video_id)
            if not _needs_work(video) or video is None or video.original_path is None:
                return
            progress.stage("validate", 1.0)
            try:
                await self._ladder(video, video.original_path, progress)
            except BadMedia as exc:
                failed = await self._set(
                    video_id, VideoChanges(status="failed", failure_reason=str(exc))
                )
                if failed is not None:
                    await self._published(video_id)
                    await self.announcer.announce(failed, "video.failed")
        finally:
            writing.cancel()

    async def _ladder(self, video: Video, original: str, progress: Progress) -> None:
        folder = storage_folder(video.id)
        with tempfile.TemporaryDirectory(prefix="clipsync-ladder-") as work:
            async with local_copy(self.storage, original, video.original_size or 0) as source:
                started = time.monotonic()
                try:
                    rungs = await child.run(
                        ladder.transcode,
                        source,
                        work,
                        ladder_config(self.ingest),
                        on_progress=lambda f: progress.stage("ladder", f),
                        stop=self.stop,
                        nice=self.ingest.transcode_nice,
                    )
                except ladder.Cancelled:
                    raise Stopped from None
            log.info(
                "video %s: %d rungs in %.1f s", video.id, len(rungs), time.monotonic() - started
            )
            # Thumbnails from a mid-sized rung: sharp enough for a poster, cheap to decode
            # whole (a 1080p decode of two hours would take minutes).
            by_height = sorted(rungs, key=lambda r: r.height)
            picked = next((r for r in by_height if r.height >= THUMBNAIL_HEIGHT), by_height[-1])
            thumbs = Path(work) / "thumbs"
            made = await child.run(
                thumbnails.make_set,
                picked.path,
                str(thumbs),
                self.thumbnail_interval,
                nice=self.ingest.transcode_nice,
            )
            progress.stage("thumbnails", 1.0)
            files = [(Path(r.path), f"{folder}/{r.name}.mp4") for r in rungs]
            # In the set's order: the storyboard last, never naming a sheet not stored yet.
            files += [(thumbs / name, stored_path(video.id, name)) for name in made.names]
            for done, (local, target) in enumerate(files, 1):
                await self.storage.write(target, _chunks(local))
                progress.stage("store", done / len(files))
        if await self.catalog.get_video(video.id) is None:
            await self._discard(files=[t for _, t in files])  # deleted while we worked
            return
        await self.catalog.set_renditions(
            video.id,
            [
                Rendition(
                    name=r.name,
                    path=f"{folder}/{r.name}.mp4",
                    bandwidth=r.bandwidth,
                    width=r.width,
                    height=r.height,
                )
                for r in rungs
            ],
        )
        ready = await self._set(video.id, VideoChanges(status="ready", failure_reason=None))
        await processing.set_progress(self.catalog, video.id, 100)
        await self._published(video.id)
        if ready is not None:
            await self.announcer.announce(ready, "video.ready")

    async def _discard(self, files: list[str]) -> None:
        for path in files:
            with contextlib.suppress(Exception):
                await self.storage.delete(path)

    async def give_up(self, job: Job, reason: str) -> None:
        """The queue's last word on a job that kept failing: the video fails with the reason."""
        video = await self.catalog.get_video(job.video_id)
        if video is None or video.status in ("ready", "failed"):
            return
        failed = await self._set(
            job.video_id,
            VideoChanges(
                status="failed",
                failure_reason=f"processing failed after {job.attempt} attempts: {reason}",
            ),
        )
        if failed is not None:
            await self._published(job.video_id)
            await self.announcer.announce(failed, "video.failed")


def _needs_work(video: Video | None) -> bool:
    return (
        video is not None
        and video.original_path is not None
        and video.status in processing.UNFINISHED
    )


async def _chunks(path: Path, size: int = 4 * 1024 * 1024) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while block := await asyncio.to_thread(source.read, size):
            yield block


def pipeline_for(
    settings: Settings,
    catalog: Catalog,
    storage: Storage,
    runner: BlockingRunner,
    library: Library,
    announcer: Announcer,
) -> Pipeline:
    """The pipeline of a gateway or a worker: what it publishes is purged from every cache."""

    async def republish(video_id: str) -> None:
        await library.cache.purge(library.tags_of_path(storage_folder(video_id)))

    return Pipeline(
        catalog,
        storage,
        runner,
        settings.ingest,
        announcer,
        republish,
        settings.jobs.claim_idle_seconds,
    )
