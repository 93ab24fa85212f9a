"""Processing end to end in one gateway: an upload becomes playable, then ready with its ladder
and thumbnails; bad media fails with the reason and keeps the original; a job run twice ends
with one set of outputs; a stopped worker hands its job back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from auth.tokens import AccessTokens
from backends.catalog import Catalog, VideoChanges
from backends.jobs import Job
from conf import Settings
from packager.synth import SynthSpec, write
from tests.conftest import serving, settings_for
from tests.probe import ffprobe

pytestmark = pytest.mark.anyio

SECRET = "p" * 40
# Three small rungs keep a transcode to a second or two on two cores.
LADDER = ["360p:360:600", "240p:240:300", "144p:144:150"]


def processing_settings(root: Path, **jobs: object) -> Settings:
    root.mkdir(exist_ok=True)
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"]["jwt_secret"] = SECRET
    raw["ingest"].update(ladder=LADDER, x264_preset="superfast", thumbnail_interval=2.0)
    raw["jobs"].update(
        {"queue": "memory", "backoff_seconds": 0.05, "claim_idle_seconds": 5.0, **jobs}
    )
    return msgspec.convert(raw, Settings)


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Originals to upload: H.264/AAC (plays as is), HEVC (waits for the ladder), and an
    H.264 file whose middle is overwritten with garbage."""
    folder = tmp_path_factory.mktemp("originals")
    made = {
        "h264": write(
            folder / "h264.mp4",
            SynthSpec(duration=6, width=640, height=360, fps=Fraction(25), faststart=True),
        ),
        "hevc": write(
            folder / "hevc.mp4",
            SynthSpec(duration=4, width=480, height=272, video="hevc", fps=Fraction(25)),
        ),
    }
    good = made["h264"].read_bytes()
    middle = len(good) // 2
    broken = folder / "broken.mp4"
    broken.write_bytes(good[:middle] + bytes(200_000) + good[middle + 200_000 :])
    made["broken"] = broken
    return made


class Gateway:
    def __init__(self, http: httpx.AsyncClient, app: Any, catalog: Catalog, root: Path) -> None:
        self.http = http
        self.app = app
        self.catalog = catalog
        self.root = root
        self.auth: dict[str, str] = {}

    async def sign_up(self, email: str) -> None:
        user = await self.catalog.create_user(email)
        token = AccessTokens({"k1": SECRET.encode()}, "k1", 900).issue(user.id, "user")
        self.auth = {"authorization": f"Bearer {token}"}

    async def upload(self, source: Path, privacy: str = "public") -> str:
        r = await self.http.post(
            "/api/v1/videos", json={"title": source.stem, "privacy": privacy}, headers=self.auth
        )
        assert r.status_code == 201, r.text
        video_id = str(r.json()["video"]["id"])
        data = await asyncio.to_thread(source.read_bytes)
        files = {"file": (source.name, data, "video/mp4")}
        r = await self.http.post(
            f"/api/v1/videos/{video_id}/original", files=files, headers=self.auth
        )
        assert r.status_code == 201, r.text
        return video_id

    async def video(self, video_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/v1/videos/{video_id}", headers=self.auth)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def wait_for(self, video_id: str, *statuses: str, seconds: float = 60) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            got = await self.video(video_id)
            if got["status"] in statuses:
                return got
            assert asyncio.get_running_loop().time() < deadline, f"still {got['status']}"
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def gateway(
    catalog: Catalog, root: Path, workers: int = 1, **jobs: object
) -> AsyncIterator[Gateway]:
    settings = processing_settings(root, gateway_workers=workers, **jobs)
    async with serving(settings, catalog, client_timeout=30) as (http, app):
        # In-process tests run no lifespan: start the gateway's job workers ourselves.
        running = asyncio.create_task(app.state.ingest.run(3600))
        gate = Gateway(http, app, catalog, root)
        await gate.sign_up("maker@example.com")
        try:
            yield gate
        finally:
            app.state.pipeline.stop.set()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def stored(root: Path, video_id: str) -> list[str]:
    folder = root / "videos" / video_id
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def test_an_upload_plays_at_once_then_gets_its_ladder(
    catalog: Catalog, tmp_path: Path, sources: dict[str, Path]
) -> None:
    async with gateway(catalog, tmp_path / "library") as gate:
        video_id = await gate.upload(sources["h264"])
        playable = await gate.wait_for(video_id, "playable", "ready")
        ready = await gate.wait_for(video_id, "ready")
        assert ready["progress"] == 100
        assert [r["name"] for r in ready["renditions"]] == ["360p", "240p", "144p"]
        assert [r["height"] for r in ready["renditions"]] == [360, 240, 144]
        assert playable["status"] in ("playable", "ready")
        master = await gate.http.get(f"/v/{video_id}/master.m3u8")
        assert master.status_code == 200
        assert master.text.count("#EXT-X-STREAM-INF") == 3
        assert "original" not in master.text  # the ladder replaced the original rendition
        for name in ("360p", "240p", "144p"):
            segment = await gate.http.get(f"/v/{video_id}/{name}/seg-1.m4s")
            assert segment.status_code == 200
        poster = await gate.http.get(f"/v/{video_id}/poster.jpg")
        assert poster.status_code == 200
        assert poster.headers["content-type"] == "image/jpeg"
        vtt = await gate.http.get(f"/v/{video_id}/storyboard.vtt")
        assert vtt.status_code == 200
        assert vtt.text.startswith("WEBVTT")
        files = stored(gate.root, video_id)
        assert {"360p.mp4", "240p.mp4", "144p.mp4", "thumbs/poster.jpg"} <= set(files)
        assert any(f.startswith("original/") for f in files)  # the original is kept
        info = ffprobe("-show_streams", gate.root / "videos" / video_id / "240p.mp4")
        kinds = {s["codec_type"]: s for s in info["streams"]}
        assert kinds["video"]["codec_name"] == "h264"
        assert kinds["audio"]["codec_name"] == "aac"


async def test_a_source_that_cannot_play_as_is_waits_for_the_ladder(
    catalog: Catalog, tmp_path: Path, sources: dict[str, Path]
) -> None:
    async with gateway(catalog, tmp_path / "library") as gate:
        video_id = await gate.upload(sources["hevc"])
        seen = await gate.wait_for(video_id, "processing", "ready")
        assert seen["status"] in ("processing", "ready")
        ready = await gate.wait_for(video_id, "ready")
        assert [r["height"] for r in ready["renditions"]] == [240, 144]  # none above 272


async def test_a_stream_corrupt_in_the_middle_fails_with_the_reason(
    catalog: Catalog, tmp_path: Path, sources: dict[str, Path]
) -> None:
    async with gateway(catalog, tmp_path / "library") as gate:
        video_id = await gate.upload(sources["broken"])
        failed = await gate.wait_for(video_id, "failed")
        assert failed["failure_reason"], failed
        files = stored(gate.root, video_id)
        assert [f for f in files if f.endswith(".mp4") and not f.startswith("original/")] == []
        [original] = [f for f in files if f.startswith("original/")]
        data = (gate.root / "videos" / video_id / original).read_bytes()
        assert data == sources["broken"].read_bytes()  # kept as uploaded


async def test_a_job_run_twice_leaves_one_set_of_outputs(
    catalog: Catalog, tmp_path: Path, sources: dict[str, Path]
) -> None:
    async with gateway(catalog, tmp_path / "library") as gate:
        video_id = await gate.upload(sources["h264"])
        await gate.wait_for(video_id, "ready")
        first = {f: _md5(gate.root / "videos" / video_id / f) for f in stored(gate.root, video_id)}
        # Delivered again (at least once): a ready video is left as it is.
        await gate.app.state.pipeline.handle(Job(video_id=video_id))
        assert stored(gate.root, video_id) == sorted(first)
        # Processed again from scratch (status set back): same files, nothing more.
        await catalog.update_video(video_id, VideoChanges(status="processing"))
        await gate.app.state.pipeline.handle(Job(video_id=video_id))
        assert stored(gate.root, video_id) == sorted(first)
        again = await gate.video(video_id)
        assert again["status"] == "ready"
        assert len(again["renditions"]) == 3


def _md5(path: Path) -> str:
    return hashlib.new("md5", path.read_bytes(), usedforsecurity=False).hexdigest()
