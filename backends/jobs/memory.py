"""The in-process queue: the default, for one machine with no Redis.

Jobs live in this process only; a restart loses the queue, and the gateway submits every
unfinished video again when it starts (see gateway.processing), so nothing is forgotten.
"""

from __future__ import annotations

import asyncio
import logging

from backends.jobs.base import Busy, DeadHandler, Depth, Handler, Job, RetryPolicy, describe

log = logging.getLogger("clipsync.jobs")


class MemoryQueue:
    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._ready: asyncio.Queue[Job] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()
        self._running = 0
        self._dead = 0

    async def submit(self, job: Job) -> None:
        self._ready.put_nowait(job)

    def _later(self, seconds: float, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._timers.discard(timer)
            self._ready.put_nowait(job)

        timer = loop.call_later(seconds, due)
        self._timers.add(timer)

    async def work(self, handle: Handler, dead: DeadHandler, concurrency: int = 1) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(self._worker(handle, dead))

    async def _worker(self, handle: Handler, dead: DeadHandler) -> None:
        while True:
            job = await self._ready.get()
            self._running += 1
            try:
                await handle(job)
            except Busy as busy:
                self._later(busy.seconds, job)
            except Exception as exc:
                reason = describe(exc)
                if self.policy.exhausted(job.attempt):
                    log.error("job for video %s failed for good: %s", job.video_id, reason)
                    self._dead += 1
                    try:
                        await dead(job, reason)
                    except Exception:
                        log.exception("recording the failure of video %s failed", job.video_id)
                else:
                    delay = self.policy.delay(job.attempt)
                    log.warning(
                        "job for video %s failed (attempt %d), again in %.0f s: %s",
                        job.video_id,
                        job.attempt,
                        delay,
                        reason,
                    )
                    self._later(delay, job.again())
            finally:
                self._running -= 1

    async def depth(self) -> Depth:
        return Depth(
            waiting=self._ready.qsize(),
            running=self._running,
            delayed=len(self._timers),
            dead=self._dead,
        )

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
