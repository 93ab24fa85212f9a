"""Job queues: in-process by default, Redis Streams when Redis is configured."""

from __future__ import annotations

from backends.cache.redis_tier import connect, parse_url
from backends.jobs.base import (
    Busy,
    DeadHandler,
    Depth,
    Handler,
    Job,
    JobQueue,
    RetryPolicy,
    describe,
)
from backends.jobs.memory import MemoryQueue
from backends.jobs.streams import StreamQueue
from conf.settings import JobsSettings

__all__ = [
    "Busy",
    "DeadHandler",
    "Depth",
    "Handler",
    "Job",
    "JobQueue",
    "MemoryQueue",
    "RetryPolicy",
    "StreamQueue",
    "describe",
    "open_queue",
    "queue_url",
]


def queue_url(settings: JobsSettings, cache_redis_url: str) -> str:
    """The Redis URL of the queue, or "" for the in-process queue."""
    if settings.queue == "memory":
        return ""
    url = settings.redis_url or cache_redis_url
    if settings.queue == "redis" and not url:
        raise ValueError("jobs.queue is 'redis' but no Redis URL is set (jobs or cache)")
    return url


def policy_of(settings: JobsSettings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        backoff_base=settings.backoff_seconds,
        backoff_max=settings.backoff_max_seconds,
    )


def open_queue(settings: JobsSettings, cache_redis_url: str, consumers: int = 1) -> JobQueue:
    url = queue_url(settings, cache_redis_url)
    if not url:
        return MemoryQueue(policy_of(settings))
    # A connection per consumer's current command, and some for submits and touches.
    redis = connect(parse_url(url), settings.redis_timeout, max_connections=2 * consumers + 8)
    return StreamQueue(
        redis, settings.redis_prefix, policy_of(settings), settings.claim_idle_seconds
    )
