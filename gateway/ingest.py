"""After the last byte of an upload: judge the original by its content and make it playable.

``validate`` probes the stored original (PyAV, in a thread, on a local copy when the library
is remote), applies the rules, and either fails the video with the reason or records what it
is. An H.264/AAC MP4 original becomes ``playable`` at once as a single rendition, packaged just
in time like any library file; anything else waits for the ladder as ``processing``.

Runs in-process after the upload completes; the job queue (Redis Streams) will run the same
function with at-least-once delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator

from backends.blocking import BlockingRunner
from backends.catalog import Catalog, Rendition, VideoChanges
from backends.errors import BadMedia, ClipSyncError
from backends.storage import Storage, read_blocks
from packager import probe

log = logging.getLogger("clipsync.ingest")


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


class Ingest:
    def __init__(self, catalog: Catalog, storage: Storage, runner: BlockingRunner) -> None:
        self.catalog = catalog
        self.storage = storage
        self.runner = runner
        self._running: set[asyncio.Task[None]] = set()

    def start(self, video_id: str) -> None:
        """Validates ``video_id`` in the background (the upload's answer does not wait)."""
        task = asyncio.create_task(self.validate(video_id))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def settle(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def validate(self, video_id: str) -> None:
        video = await self.catalog.get_video(video_id)
        if video is None or video.original_path is None or video.status != "uploaded":
            return  # deleted meanwhile, or already judged (a repeated job)
        try:
            async with local_copy(
                self.storage, video.original_path, video.original_size or 0
            ) as path:
                facts = await self.runner.run(probe.probe, path)
            probe.check(facts)
        except BadMedia as exc:
            await self.catalog.update_video(
                video_id, VideoChanges(status="failed", failure_reason=str(exc))
            )
            return
        except ClipSyncError as exc:  # storage trouble: leave it 'uploaded' for a retry
            log.warning("validating video %s failed: %s", video_id, exc)
            return
        known = VideoChanges(
            duration_ms=round(facts.duration * 1000), width=facts.width, height=facts.height
        )
        await self.catalog.update_video(video_id, known)
        if probe.plays_as_is(facts):
            size = video.original_size or 0
            bandwidth = max(1, round(size * 8 / facts.duration)) if facts.duration else 1
            original = Rendition(
                name="original",
                path=video.original_path,
                bandwidth=bandwidth,
                width=facts.width,
                height=facts.height,
            )
            await self.catalog.set_renditions(video_id, [original])
            await self.catalog.update_video(video_id, VideoChanges(status="playable"))
        else:
            await self.catalog.update_video(video_id, VideoChanges(status="processing"))
