"""The Redis Streams queue: many gateways submit, many ``clipsync worker`` processes take.

One stream, one consumer group. A worker reads with XREADGROUP and acknowledges (XACK, then
XDEL so the stream holds only unfinished work) after the handler succeeded: delivery is at
least once. While a job runs its worker touches the entry every ``claim_idle / 3`` seconds
(XCLAIM ... JUSTID resets the idle time); an entry idle for ``claim_idle`` belongs to a dead
worker and the next idle worker takes it over (XAUTOCLAIM). A failed attempt goes to a sorted
set with its due time (exponential backoff) and comes back into the stream when due; after
``max_attempts`` the job goes to the dead-letter stream. A worker that crashes on a job over
and over counts as failing it: the entry's delivery count is added to the job's attempts.

Keys share one hash tag, so a Redis Cluster keeps them in one slot (the Lua move needs that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from typing import Any

import msgspec
from redis.exceptions import RedisError, ResponseError

from backends.errors import StorageUnavailable
from backends.jobs.base import Busy, DeadHandler, Depth, Handler, Job, RetryPolicy, describe

log = logging.getLogger("clipsync.jobs")
GROUP = "workers"
# Seconds an idle worker waits between looks for work. A look is one XREADGROUP without BLOCK:
# a blocking read would hold a connection and, cancelled at shutdown, can leave it half-read.
POLL = 0.5
OUTAGE_PAUSE = 2.0  # seconds a worker waits after Redis failed it

# Due retries (score <= now) move from the sorted set into the stream, atomically.
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 32)
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('XADD', KEYS[2], '*', 'job', job)
end
return #due
"""


def keys(prefix: str) -> tuple[str, str, str]:
    """(stream, delayed sorted set, dead-letter stream) under ``prefix``, one hash slot."""
    base = f"{prefix}{{jobs}}"
    return f"{base}:stream", f"{base}:delayed", f"{base}:dead"


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamQueue:
    def __init__(
        self,
        redis: Any,
        prefix: str,
        policy: RetryPolicy,
        claim_idle: float = 60.0,
        poll: float = POLL,
    ) -> None:
        self.redis = redis  # a redis-py asyncio client (backends.cache.connect)
        self.policy = policy
        self.claim_idle = claim_idle
        self.poll = poll  # also how late a due retry may start
        self.stream, self.delayed, self.dead = keys(prefix)
        self.consumer = consumer_name()
        self._promote = redis.register_script(PROMOTE)
        self._next_promote = 0.0
        self._group_ready = False
        self._trouble_logged = 0.0

    async def submit(self, job: Job) -> None:
        try:
            await self.redis.xadd(self.stream, {"job": msgspec.json.encode(job)})
        except RedisError as exc:
            raise StorageUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def work(self, handle: Handler, dead: DeadHandler, concurrency: int = 1) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(self._worker(handle, dead))

    async def _worker(self, handle: Handler, dead: DeadHandler) -> None:
        me = asyncio.current_task()
        while True:
            # redis-py can swallow a cancellation that lands while a reply is being read (it
            # surfaces as a timeout or not at all): a cancelled worker must still stop.
            if me is not None and me.cancelling():
                raise asyncio.CancelledError
            try:
                await self._ensure_group()
                await self._promote_due()
                entry = await self._reclaim() or await self._read()
            except RedisError as exc:
                self._trouble(exc)
                await asyncio.sleep(OUTAGE_PAUSE)
                continue
            if entry is not None:
                await self._run(entry, handle, dead)
            else:
                await asyncio.sleep(self.poll)

    def _trouble(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._trouble_logged > 30:  # once per 30 s, not once per poll
            self._trouble_logged = now
            log.warning("job queue: Redis unavailable (%s); retrying", describe(exc))
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            self._group_ready = False  # the stream was deleted (FLUSHALL): create it again

    async def _promote_due(self) -> None:
        now = time.time()
        if now >= self._next_promote:
            self._next_promote = now + self.poll
            await self._promote(keys=[self.delayed, self.stream], args=[now])

    async def _reclaim(self) -> tuple[str, dict[Any, Any], int] | None:
        """An entry of a dead worker, idle for ``claim_idle``: (id, fields, times delivered)."""
        answer = await self.redis.xautoclaim(
            self.stream, GROUP, self.consumer, int(self.claim_idle * 1000), "0-0", count=1
        )
        claimed = answer[1] if len(answer) > 1 else []
        if not claimed:
            return None
        entry_id, fields = claimed[0]
        if fields is None:  # deleted meanwhile (acknowledged by a slow owner)
            return None
        info = await self.redis.xpending_range(
            self.stream, GROUP, min=entry_id, max=entry_id, count=1
        )
        delivered = int(info[0]["times_delivered"]) if info else 2
        log.warning("job %s of a stopped worker taken over", _text(entry_id))
        return _text(entry_id), fields, delivered

    async def _read(self) -> tuple[str, dict[Any, Any], int] | None:
        answer = await self.redis.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=1)
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                return _text(entry_id), fields, 1
        return None

    async def _run(
        self, entry: tuple[str, dict[Any, Any], int], handle: Handler, dead: DeadHandler
    ) -> None:
        entry_id, fields, delivered = entry
        raw = fields.get(b"job", fields.get("job", b""))
        try:
            job = msgspec.json.decode(bytes(raw), type=Job)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            log.error("job queue: dropping unreadable entry %s: %r", entry_id, raw)
            await self._finish(entry_id)
            return
        # Deliveries beyond the first were crashes of workers holding it: they count.
        job = Job(video_id=job.video_id, attempt=job.attempt + delivered - 1)
        if job.attempt > self.policy.max_attempts:
            await self._give_up(entry_id, job, "its worker stopped during every attempt", dead)
            return
        touching = asyncio.create_task(self._touch(entry_id))
        try:
            await handle(job)
        except Busy as busy:
            await self._retry(entry_id, job, busy.seconds)
        except asyncio.CancelledError:
            # Shutting down: hand the job back at once instead of making others wait.
            with contextlib.suppress(RedisError):
                await asyncio.shield(self._release(entry_id, job))
            raise
        except Exception as exc:
            reason = describe(exc)
            if self.policy.exhausted(job.attempt):
                await self._give_up(entry_id, job, reason, dead)
            else:
                delay = self.policy.delay(job.attempt)
                log.warning(
                    "job for video %s failed (attempt %d), again in %.0f s: %s",
                    job.video_id,
                    job.attempt,
                    delay,
                    reason,
                )
                await self._retry(entry_id, job.again(), delay)
        else:
            await self._finish(entry_id)
        finally:
            touching.cancel()

    async def _touch(self, entry_id: str) -> None:
        """Keep the entry ours while the job runs: reset its idle time now and then."""
        while True:
            await asyncio.sleep(self.claim_idle / 3)
            try:
                await self.redis.xclaim(
                    self.stream, GROUP, self.consumer, 0, [entry_id], justid=True
                )
            except RedisError as exc:
                self._trouble(exc)

    async def _settle(self, entry_id: str, *more: tuple[str, tuple[Any, ...]]) -> None:
        """Acknowledge and delete the entry, with ``more`` commands, in one transaction;
        if Redis fails here the entry stays pending and is taken over later (at least once)."""
        for attempt in range(3):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    for command, args in more:
                        getattr(pipe, command)(*args)
                    pipe.xack(self.stream, GROUP, entry_id)
                    pipe.xdel(self.stream, entry_id)
                    await pipe.execute()
                return
            except RedisError as exc:
                self._trouble(exc)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _finish(self, entry_id: str) -> None:
        await self._settle(entry_id)

    async def _retry(self, entry_id: str, job: Job, seconds: float) -> None:
        member = msgspec.json.encode(job)
        await self._settle(entry_id, ("zadd", (self.delayed, {member: time.time() + seconds})))

    async def _release(self, entry_id: str, job: Job) -> None:
        await self._settle(entry_id, ("xadd", (self.stream, {"job": msgspec.json.encode(job)})))

    async def _give_up(self, entry_id: str, job: Job, reason: str, dead: DeadHandler) -> None:
        log.error("job for video %s failed for good: %s", job.video_id, reason)
        record = {
            "job": msgspec.json.encode(job),
            "reason": reason,
            "failed_at": str(time.time()),
            "consumer": self.consumer,
        }
        await self._settle(entry_id, ("xadd", (self.dead, record)))
        try:
            await dead(job, reason)
        except Exception:
            log.exception("recording the failure of video %s failed", job.video_id)

    async def depth(self) -> Depth:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xlen(self.stream)
                pipe.zcard(self.delayed)
                pipe.xlen(self.dead)
                length, delayed, dead = await pipe.execute()
            running = 0
            with contextlib.suppress(ResponseError):  # no group yet: nothing running
                running = int((await self.redis.xpending(self.stream, GROUP))["pending"])
        except RedisError as exc:
            raise StorageUnavailable(f"the job queue (Redis) is unavailable: {exc}") from None
        return Depth(
            waiting=max(0, int(length) - running),
            running=running,
            delayed=int(delayed),
            dead=int(dead),
        )

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()
            # A connection whose read a cancellation cut short is never handed back to the
            # pool; close it too (the pool would only close those it holds).
            pool = getattr(self.redis, "connection_pool", None)
            if pool is not None:
                await pool.disconnect(inuse_connections=True)
