"""Job queues: retries with backoff, dead letters, and — on a real Redis — at-least-once
delivery with stale jobs of dead workers taken over, and none stolen from live ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from backends.cache.redis_tier import connect, parse_url
from backends.errors import StorageUnavailable
from backends.jobs import Busy, Job, JobQueue, MemoryQueue, RetryPolicy, StreamQueue
from backends.jobs.streams import GROUP, keys
from tests.redis_fixtures import RedisServer

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, backoff_base=0.05, backoff_max=0.2)


@pytest.mark.parametrize(
    ("attempt", "jitter", "seconds"),
    [
        (1, 0.0, 30.0),
        (2, 0.0, 60.0),
        (3, 0.0, 120.0),
        (1, 1.0, 36.0),  # up to 20% later, so failures of many jobs spread out
        (7, 0.0, 1920.0),
        (8, 0.0, 3600.0),  # capped
        (30, 1.0, 3600.0),  # the cap holds with jitter too
    ],
)
def test_backoff_doubles_up_to_its_cap(attempt: int, jitter: float, seconds: float) -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base=30.0, backoff_max=3600.0)
    assert policy.delay(attempt, jitter) == pytest.approx(seconds)


def test_attempts_end_at_the_limit() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


class Recorder:
    """A handler that fails the first ``failures`` attempts of each video, recording each."""

    def __init__(self, failures: int = 0, seconds: float = 0.0) -> None:
        self.failures = failures
        self.seconds = seconds
        self.calls: list[Job] = []
        self.dead: list[tuple[Job, str]] = []
        self.done: list[str] = []
        self.busy: set[str] = set()

    async def handle(self, job: Job) -> None:
        self.calls.append(job)
        if job.video_id in self.busy:
            self.busy.discard(job.video_id)
            raise Busy(0.05)
        if self.seconds:
            await asyncio.sleep(self.seconds)
        if sum(c.video_id == job.video_id for c in self.calls) <= self.failures:
            raise RuntimeError(f"storage away for {job.video_id}")
        self.done.append(job.video_id)

    async def give_up(self, job: Job, reason: str) -> None:
        self.dead.append((job, reason))


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def working(queue: JobQueue, recorder: Recorder, concurrency: int = 1) -> AsyncIterator[None]:
    task = asyncio.create_task(queue.work(recorder.handle, recorder.give_up, concurrency))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


QueueMaker = Callable[[RetryPolicy, float], Awaitable[JobQueue]]


@pytest.fixture(params=["memory", "redis"])
async def make_queue(request: pytest.FixtureRequest) -> AsyncIterator[QueueMaker]:
    made: list[JobQueue] = []

    async def make(policy: RetryPolicy = FAST, claim_idle: float = 60.0) -> JobQueue:
        if request.param == "memory":
            queue: JobQueue = MemoryQueue(policy)
        else:
            prefix = request.getfixturevalue("redis_prefix")
            url = request.getfixturevalue("shared_redis")
            queue = StreamQueue(
                connect(parse_url(url), 5.0, 16), prefix, policy, claim_idle, poll=0.05
            )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()


async def test_each_job_is_handled_once(make_queue: QueueMaker) -> None:
    queue = await make_queue(FAST, 60.0)
    recorder = Recorder()
    for n in range(5):
        await queue.submit(Job(video_id=f"v{n}"))
    async with working(queue, recorder, concurrency=2):
        await until(lambda: len(recorder.done) == 5)
        await asyncio.sleep(0.3)
    assert sorted(recorder.done) == [f"v{n}" for n in range(5)]
    assert len(recorder.calls) == 5
    depth = await queue.depth()
    assert (depth.waiting, depth.running, depth.delayed, depth.dead) == (0, 0, 0, 0)


async def test_a_failing_job_is_tried_again_then_succeeds(make_queue: QueueMaker) -> None:
    queue = await make_queue(FAST, 60.0)
    recorder = Recorder(failures=2)
    await queue.submit(Job(video_id="flaky"))
    async with working(queue, recorder):
        await until(lambda: recorder.done == ["flaky"])
    assert [c.attempt for c in recorder.calls] == [1, 2, 3]
    assert recorder.dead == []


async def test_a_job_failing_every_time_is_given_up(make_queue: QueueMaker) -> None:
    queue = await make_queue(FAST, 60.0)
    recorder = Recorder(failures=99)
    await queue.submit(Job(video_id="broken"))
    async with working(queue, recorder):
        await until(lambda: len(recorder.dead) == 1)
        await asyncio.sleep(0.3)  # and it does not come back
    assert [c.attempt for c in recorder.calls] == [1, 2, 3]
    job, reason = recorder.dead[0]
    assert job.video_id == "broken"
    assert reason == "storage away for broken"
    assert (await queue.depth()).dead == 1


async def test_busy_is_not_an_attempt(make_queue: QueueMaker) -> None:
    queue = await make_queue(FAST, 60.0)
    recorder = Recorder()
    recorder.busy.add("held")
    await queue.submit(Job(video_id="held"))
    async with working(queue, recorder):
        await until(lambda: recorder.done == ["held"])
    assert [c.attempt for c in recorder.calls] == [1, 1]


# Redis only -------------------------------------------------------------------------------


@pytest.fixture
async def raw(shared_redis: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(shared_redis)
    yield client
    await client.aclose()


def stream_queue(
    url: str, prefix: str, claim_idle: float, policy: RetryPolicy = FAST
) -> StreamQueue:
    return StreamQueue(connect(parse_url(url), 5.0, 16), prefix, policy, claim_idle, poll=0.05)


async def test_a_job_of_a_dead_worker_is_taken_over(
    shared_redis: str, redis_prefix: str, raw: aioredis.Redis
) -> None:
    queue = stream_queue(shared_redis, redis_prefix, claim_idle=0.5)
    stream, _, _ = keys(redis_prefix)
    await queue.submit(Job(video_id="orphan"))
    await raw.xgroup_create(stream, GROUP, id="0", mkstream=True)
    # A worker reads the job and dies without acknowledging it.
    taken = await raw.xreadgroup(GROUP, "dead-worker", {stream: ">"}, count=1)
    assert taken
    recorder = Recorder()
    async with working(queue, recorder):
        await until(lambda: recorder.done == ["orphan"])
        await asyncio.sleep(0.8)  # nothing is handled twice
    assert len(recorder.calls) == 1
    assert recorder.calls[0].attempt == 2  # the dead worker's delivery counts
    assert await raw.xlen(stream) == 0
    assert (await raw.xpending(stream, GROUP))["pending"] == 0
    await queue.close()


async def test_a_worker_that_keeps_dying_sends_its_job_to_the_dead_letters(
    shared_redis: str, redis_prefix: str, raw: aioredis.Redis
) -> None:
    queue = stream_queue(shared_redis, redis_prefix, claim_idle=0.2)
    stream, _, dead = keys(redis_prefix)
    await queue.submit(Job(video_id="poison"))
    await raw.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await raw.xreadgroup(GROUP, "dead-1", {stream: ">"}, count=1)
    for name in ("dead-2", "dead-3"):  # taken over and dying again, twice
        await asyncio.sleep(0.25)
        await raw.xautoclaim(stream, GROUP, name, 200, "0-0", count=1)
    await asyncio.sleep(0.25)
    recorder = Recorder()
    async with working(queue, recorder):
        await until(lambda: len(recorder.dead) == 1)
    assert recorder.calls == []
    assert "stopped during every attempt" in recorder.dead[0][1]
    [(_, fields)] = await raw.xrange(dead)
    assert msgspec.json.decode(fields[b"job"], type=Job).video_id == "poison"
    await queue.close()


async def test_a_long_job_of_a_live_worker_is_not_taken_over(
    shared_redis: str, redis_prefix: str
) -> None:
    first = stream_queue(shared_redis, redis_prefix, claim_idle=0.5)
    second = stream_queue(shared_redis, redis_prefix, claim_idle=0.5)
    recorder = Recorder(seconds=2.0)  # four times the idle time
    await first.submit(Job(video_id="long"))
    async with working(first, recorder):
        await until(lambda: len(recorder.calls) == 1)
        async with working(second, recorder):
            await until(lambda: recorder.done == ["long"])
            await asyncio.sleep(0.8)
    assert len(recorder.calls) == 1
    await first.close()
    await second.close()


async def test_a_worker_stopping_hands_its_job_back_at_once(
    shared_redis: str, redis_prefix: str
) -> None:
    first = stream_queue(shared_redis, redis_prefix, claim_idle=600)  # no takeover by idleness
    slow = Recorder(seconds=30)
    await first.submit(Job(video_id="handed-back"))
    async with working(first, slow):
        await until(lambda: len(slow.calls) == 1)
    second = stream_queue(shared_redis, redis_prefix, claim_idle=600)
    quick = Recorder()
    async with working(second, quick):
        await until(lambda: quick.done == ["handed-back"], seconds=5)
    assert quick.calls[0].attempt == 1
    await first.close()
    await second.close()


async def submit_when_up(queue: StreamQueue, job: Job, seconds: float = 15.0) -> None:
    """Submitting while Redis is away raises StorageUnavailable, as callers expect."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await queue.submit(job)
        except StorageUnavailable:
            assert asyncio.get_running_loop().time() < deadline, "Redis did not come back"
            await asyncio.sleep(0.1)


async def test_workers_ride_out_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    try:
        queue = stream_queue(server.url, "outage:", claim_idle=5)
        recorder = Recorder()
        await queue.submit(Job(video_id="before"))
        async with working(queue, recorder):
            await until(lambda: recorder.done == ["before"])
            server.stop()
            await asyncio.sleep(1.0)
            server.start()  # empty: the stream and its group are gone too
            await submit_when_up(queue, Job(video_id="after"))
            await until(lambda: "after" in recorder.done, seconds=15)
        await queue.close()
    finally:
        server.stop()
