"""Jobs: what a job is, what a queue promises, and when a failed job is tried again.

A job names a video to process; the handler is idempotent (it reads the video's state from the
catalog and overwrites the same outputs), so delivering a job twice costs time, never
correctness. That is what lets the Redis queue promise *at least once* and nothing stronger.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec


class Job(msgspec.Struct, frozen=True, kw_only=True):
    video_id: str
    attempt: int = 1  # 1 on the first delivery; a retry carries the next number

    def again(self) -> Job:
        return Job(video_id=self.video_id, attempt=self.attempt + 1)


class Busy(Exception):
    """The handler cannot start this job yet (another worker holds the video): try again
    after ``seconds`` without counting an attempt."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"busy, try again in {seconds:.0f} s")
        self.seconds = seconds


Handler = Callable[[Job], Awaitable[None]]
# Called once a job has failed ``max_attempts`` times: the reason is the last error's message.
DeadHandler = Callable[[Job, str], Awaitable[None]]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_attempts: int = 5
    backoff_base: float = 30.0  # seconds before the second attempt; doubles each time
    backoff_max: float = 3600.0

    def delay(self, attempt: int, jitter: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential,
        capped, with up to 20% jitter so failures of many jobs do not return in step."""
        base = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, attempt - 1))
        share = random.random() if jitter is None else jitter
        return min(self.backoff_max, base * (1 + 0.2 * share))

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


class Depth(msgspec.Struct, frozen=True, kw_only=True):
    waiting: int  # ready to be taken
    running: int  # taken, not acknowledged (pending in Redis terms)
    delayed: int  # waiting for a retry's time to come
    dead: int  # gave up on


class JobQueue(Protocol):
    async def submit(self, job: Job) -> None:
        """Queue ``job``; raises StorageUnavailable when the queue cannot take it."""
        ...

    async def work(self, handle: Handler, dead: DeadHandler, concurrency: int = 1) -> None:
        """Take and run jobs until cancelled, ``concurrency`` at a time."""
        ...

    async def depth(self) -> Depth: ...

    async def close(self) -> None: ...


def describe(exc: BaseException) -> str:
    """One line for a failed attempt: the message, or the class name when there is none."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:500] or type(exc).__name__
