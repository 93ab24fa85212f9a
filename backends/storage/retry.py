"""Bounded retries under a deadline for remote storage calls, and what their failures mean.

Every remote call runs under two clocks: a timeout per attempt and the deadline of the whole
client request (``deadline_scope``, set by the gateway around each request), so a dead or slow
store costs a request at most its deadline, never a hang. Transient failures (timeouts, refused
or reset connections, throttling, 5xx) are retried with exponential backoff and full jitter;
the others are final at once. Messages never carry a store's own error text: it may quote URLs
with SAS signatures or keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from backends.errors import (
    BadMedia,
    ClipSyncError,
    MediaNotFound,
    SourceChanged,
    StorageUnavailable,
)
from backends.throttle import ThrottledLog

T = TypeVar("T")
log = logging.getLogger("clipsync.storage")

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "clipsync_storage_deadline", default=None
)


@contextlib.contextmanager
def deadline_scope(seconds: float) -> Iterator[None]:
    """Storage calls made inside (and in tasks started inside) finish within ``seconds``."""
    end = time.monotonic() + seconds
    current = _DEADLINE.get()
    token = _DEADLINE.set(end if current is None else min(current, end))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class Failure(enum.Enum):
    NOT_FOUND = "not found"
    CHANGED = "changed"  # a conditional read found another version
    DENIED = "denied"  # credentials refused or missing
    BAD_RANGE = "bad range"  # the object is shorter than its stat said
    TRANSIENT = "transient"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in all, the first included
    base_delay: float = 0.05
    max_delay: float = 1.0
    attempt_timeout: float = 4.0
    deadline: float = 10.0  # for one call when no request deadline is set
    write_timeout: float = 120.0  # one part of an upload

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^attempt)]."""
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2**attempt))


Classifier = Callable[[BaseException], tuple[Failure, str]]


class Retrier:
    """Runs one store's calls: per-attempt timeout, deadline, classified failures."""

    def __init__(self, name: str, policy: RetryPolicy, classify: Classifier) -> None:
        self.name = name
        self.policy = policy
        self.classify = classify
        self.throttle = ThrottledLog(log)

    def _end(self) -> float:
        own = time.monotonic() + self.policy.deadline
        request = _DEADLINE.get()
        return own if request is None else min(own, request)

    async def call(
        self,
        verb: str,
        path: str,
        op: Callable[[], Awaitable[T]],
        *,
        retry: bool = True,
        attempt_seconds: float | None = None,
    ) -> T:
        """``op()`` with retries; ``verb`` and ``path`` name the call in messages.

        ``attempt_seconds`` replaces the per-attempt timeout for long calls (a part upload):
        each attempt gets that long, and no client request's deadline applies.
        """
        what = f"{verb} {path or '/'}"
        attempts = self.policy.attempts if retry else 1
        long = attempt_seconds is not None
        per_attempt = attempt_seconds or self.policy.attempt_timeout
        end = time.monotonic() + attempts * (per_attempt + 1) if long else self._end()
        reason = "no attempt was possible before the request deadline"
        tried = 0
        for attempt in range(attempts):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            tried += 1
            try:
                async with asyncio.timeout(min(per_attempt, remaining)):
                    return await op()
            except TimeoutError:
                reason = "timed out"
            except ClipSyncError:
                raise
            except Exception as exc:  # a store library's error, classified below
                failure, reason = self.classify(exc)
                self._final(failure, path, what, reason)
            self.throttle.warn(f"{self.name} storage: {what}: {reason}")
            if attempt + 1 < attempts:
                delay = self.policy.backoff(attempt)
                if time.monotonic() + delay >= end:
                    break
                await asyncio.sleep(delay)
        tries = f"{tried} attempt{'s' if tried != 1 else ''}"
        raise StorageUnavailable(f"{self.name} storage unavailable: {what}: {reason} ({tries})")

    def _final(self, failure: Failure, path: str, what: str, reason: str) -> None:
        """Raise the domain error for a failure no retry can fix; return for transient ones."""
        if failure is Failure.NOT_FOUND:
            raise MediaNotFound(f"{path or '/'} not found") from None
        if failure is Failure.CHANGED:
            raise SourceChanged(path) from None
        if failure is Failure.BAD_RANGE:
            raise BadMedia(f"{what}: {reason} (the file is shorter than expected)") from None
        if failure is Failure.DENIED:
            self.throttle.warn(f"{self.name} storage: {what}: access denied: {reason}")
            raise StorageUnavailable(
                f"{self.name} storage refused access ({reason}); check the credentials",
                retry_after=30,
            ) from None

    async def guard(self, verb: str, path: str, op: Callable[[], Awaitable[T]]) -> T:
        """``op()`` once, with no timeout (a long upload), its failures classified."""
        try:
            return await op()
        except Exception as exc:
            if isinstance(exc, ClipSyncError):
                raise
            failure, reason = self.classify(exc)
            self._final(failure, path, f"{verb} {path}", reason)
            self.throttle.warn(f"{self.name} storage: {verb} {path}: {reason}")
            raise StorageUnavailable(
                f"{self.name} storage: {verb} {path} failed: {reason}"
            ) from None
