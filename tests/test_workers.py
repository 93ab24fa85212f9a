"""`clipsync worker` processes on a real Redis queue: a worker killed in the middle of a
transcode has its job taken over by another (outputs complete, nothing duplicated), and a
worker stopped with SIGTERM hands its job back at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import msgspec
import pytest
import redis

from backends.cache.redis_tier import connect, parse_url
from backends.catalog import Catalog, NewVideo, VideoChanges, engines
from backends.catalog.records import Video
from backends.jobs import Job, RetryPolicy, StreamQueue
from backends.jobs.streams import GROUP, keys
from conf import Settings
from gateway.cli import _prepare_catalog as prepare_catalog
from packager.synth import SynthSpec, write
from tests.conftest import TEST_CATALOG, settings_for
from tests.metrics import scrape_sync
from tests.probe import ffprobe
from tests.serving import free_port, settings_env, stop_process

LADDER = ["360p:360:600", "240p:240:300", "144p:144:150"]


@pytest.fixture(scope="module")
def long_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough that a transcode is still running when the test kills its worker."""
    folder = tmp_path_factory.mktemp("worker-source")
    spec = SynthSpec(duration=40, width=640, height=360, fps=Fraction(25), noise=8)
    return write(folder / "long.mp4", spec)


def _settings(root: Path, redis_url: str, prefix: str, claim_idle: float) -> Settings:
    raw = msgspec.to_builtins(settings_for(root))
    raw["ingest"].update(ladder=LADDER, x264_preset="veryfast")
    raw["jobs"].update(
        queue="redis",
        redis_url=redis_url,
        redis_prefix=prefix,
        claim_idle_seconds=claim_idle,
        backoff_seconds=0.1,
    )
    return msgspec.convert(raw, Settings)


class Workers:
    def __init__(self, settings: Settings, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, metrics_port: int = 0) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSYNC_")}
        env.update(settings_env(self.settings))
        log = (self.folder / f"worker-{len(self.running)}.log").open("wb")
        more = ["--metrics-port", str(metrics_port)] if metrics_port else []
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker", *more],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                stop_process(process)

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.folder.glob("worker-*.log")))


@pytest.fixture
def workers(tmp_path: Path, shared_redis: str, redis_prefix: str) -> Iterator[Workers]:
    root = tmp_path / "library"
    root.mkdir()
    prepare_catalog(TEST_CATALOG)  # as the workers will: the run's catalog gets its schema
    team = Workers(_settings(root, shared_redis, redis_prefix, claim_idle=2.0), tmp_path)
    yield team
    team.stop_all()


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _with_catalog(work: object) -> object:
    catalog = Catalog(engines.create(TEST_CATALOG))
    try:
        return await work(catalog)  # type: ignore[operator]
    finally:
        await catalog.close()


def _uploaded(root: Path, source: Path) -> str:
    """A video whose original has just been uploaded, and its job in the queue."""

    async def create(catalog: Catalog) -> str:
        owner = await catalog.create_user(f"worker-{uuid.uuid4().hex[:8]}@example.com")
        return (await catalog.create_video(owner.id, NewVideo(title="long"))).id

    video_id = str(_run(_with_catalog(create)))
    path = f"videos/{video_id}/original/long.mp4"
    (root / path).parent.mkdir(parents=True)
    (root / path).write_bytes(source.read_bytes())
    changes = VideoChanges(
        status="uploaded", original_path=path, original_size=source.stat().st_size
    )

    async def uploaded(catalog: Catalog) -> None:
        await catalog.update_video(video_id, changes)

    _run(_with_catalog(uploaded))
    return video_id


def _submit(settings: Settings, video_id: str) -> None:
    async def submit() -> None:
        client = connect(parse_url(settings.jobs.redis_url), 5.0, 4)
        queue = StreamQueue(client, settings.jobs.redis_prefix, RetryPolicy())
        await queue.submit(Job(video_id=video_id))
        await queue.close()

    asyncio.run(submit())


def _video(video_id: str) -> tuple[Video, str | None]:
    async def read(catalog: Catalog) -> tuple[Video, str | None]:
        from sqlalchemy import select

        from backends.catalog import schema

        video = await catalog.get_video(video_id)
        assert video is not None
        async with catalog.reader.connect() as conn:
            owner = (
                await conn.execute(
                    select(schema.videos.c.job_owner).where(schema.videos.c.id == video_id)
                )
            ).scalar()
        return video, owner

    got = _run(_with_catalog(read))
    assert isinstance(got, tuple)
    return got


def _wait(video_id: str, done: object, seconds: float, team: Workers) -> tuple[Video, str | None]:
    deadline = time.monotonic() + seconds
    while True:
        video, owner = _video(video_id)
        if done(video, owner):  # type: ignore[operator]
            return video, owner
        assert time.monotonic() < deadline, f"{video.status} {video.progress}%\n{team.logs()}"
        time.sleep(0.2)


def _outputs_complete(root: Path, video: Video, settings: Settings) -> None:
    folder = root / "videos" / video.id
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    rungs = [f for f in files if f.endswith(".mp4") and not f.startswith("original/")]
    assert rungs == ["144p.mp4", "240p.mp4", "360p.mp4"]
    assert not [f for f in files if ".partial-" in f]  # no half-written object left
    assert "thumbs/poster.jpg" in files
    assert [r.name for r in video.renditions] == ["360p", "240p", "144p"]
    for name in rungs:
        info = ffprobe("-show_format", folder / name)
        assert float(info["format"]["duration"]) == pytest.approx(40.0, abs=0.2)
    stream, _, dead = keys(settings.jobs.redis_prefix)
    client = redis.Redis.from_url(str(settings.jobs.redis_url))
    assert client.xlen(stream) == 0  # acknowledged and gone
    assert client.xpending(stream, GROUP)["pending"] == 0
    assert client.xlen(dead) == 0


@pytest.mark.player
def test_a_killed_worker_s_job_is_taken_over(workers: Workers, long_source: Path) -> None:
    root = Path(workers.settings.storage.library)
    first = workers.start()
    video_id = _uploaded(root, long_source)
    _submit(workers.settings, video_id)
    _, owner = _wait(video_id, lambda v, o: o is not None and v.progress >= 5, 60, workers)
    assert owner is not None
    assert f"-{first.pid}-" in owner  # the first worker holds it
    first.send_signal(signal.SIGKILL)  # no chance to hand anything back
    first.wait()
    port = free_port()
    second = workers.start(metrics_port=port)
    video, _ = _wait(video_id, lambda v, o: v.status in ("ready", "failed"), 120, workers)
    assert video.status == "ready", f"{video.failure_reason}\n{workers.logs()}"
    assert "taken over" in workers.logs()
    _outputs_complete(root, video, workers.settings)
    # The worker's own /metrics: the job it finished, and the queue it reads (now empty).
    seen = scrape_sync(f"http://127.0.0.1:{port}")
    assert seen.value("clipsync_job_duration_seconds_count", outcome="done") == 1
    assert seen.value("clipsync_job_duration_seconds_count", outcome="failed") == 0
    assert ("clipsync_jobs_queue_depth", (("state", "waiting"),)) in seen
    assert seen.value("clipsync_jobs_queue_depth", state="waiting") == 0
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=15) == 0


@pytest.mark.player
def test_a_stopped_worker_hands_its_job_back(workers: Workers, long_source: Path) -> None:
    root = Path(workers.settings.storage.library)
    # Long takeover and lease times: only a hand-back can let the second worker start soon.
    slow = _settings(
        root, str(workers.settings.jobs.redis_url), workers.settings.jobs.redis_prefix, 600.0
    )
    workers.settings = slow
    first = workers.start()
    video_id = _uploaded(root, long_source)
    _submit(slow, video_id)
    _wait(video_id, lambda v, o: o is not None and v.progress >= 5, 60, workers)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 0
    _, owner = _video(video_id)
    assert owner is None  # the lease was let go, not left to run out
    workers.start()
    video, _ = _wait(video_id, lambda v, o: v.status in ("ready", "failed"), 120, workers)
    assert video.status == "ready", f"{video.failure_reason}\n{workers.logs()}"
    _outputs_complete(root, video, slow)
