"""The whole ingest path with real clients against `clipsync serve`: tuspy uploads a generated
file in 1 MB chunks, is interrupted and resumes; the stored original's MD5 equals the source's;
the video becomes playable, then ready; hls.js in Chromium plays the ladder to the end and
switches levels without an error."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec
import pytest
from tusclient import client as tus_client

from backends.catalog import Catalog, engines
from conf import Settings
from packager.synth import SynthSpec, write
from tests.conftest import TEST_CATALOG, settings_for, signed_in
from tests.serving import run_server, stop_server
from tests.test_players import HLSJS, _browser

SECRET = "e" * 40
MB = 1024 * 1024
LADDER = ["360p:360:600", "240p:240:300", "144p:144:150"]


def _settings(root: Path) -> Settings:
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"]["jwt_secret"] = SECRET
    raw["ingest"].update(ladder=LADDER, x264_preset="veryfast")
    raw["jobs"].update(queue="memory", gateway_workers=1)
    return msgspec.convert(raw, Settings)


def _status(base: str, video_id: str, auth: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(f"{base}/api/v1/videos/{video_id}", headers=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait(base: str, video_id: str, auth: dict[str, str], *wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    seen = _status(base, video_id, auth)
    while seen["status"] not in wanted:
        assert seen["status"] != "failed", seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)
        seen = _status(base, video_id, auth)
    return seen


def _play_switching(base: str, src: str) -> dict[str, Any]:
    """Play ``src`` in hls.js at 4x, switching to the highest level after start and, midway,
    at once to the lowest (as a player's ABR would on a sudden throughput drop)."""
    playwright, browser = _browser()
    try:
        page = browser.new_page()
        page.route("**/hls.min.js", lambda route: route.fulfill(path=str(HLSJS)))
        page.goto(f"{base}/player?{urlencode({'src': src, 'rate': 4})}")
        forced: list[int] = []
        deadline = time.monotonic() + 90
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = page.evaluate("() => window.clipsync")
            if state["ended"] or state["fatal"]:
                break
            at = page.evaluate("() => video.currentTime")
            levels = len(state["levels"])
            if state["playing"] and not forced:
                forced.append(levels - 1)  # hls.js lists levels lowest bitrate first
                page.evaluate("() => { hls.nextLevel = hls.levels.length - 1; }")
            elif at > 7 and len(forced) == 1:
                forced.append(0)
                page.evaluate("() => { hls.currentLevel = 0; }")  # at once: flushes the buffer
            time.sleep(0.2)
        state["played"] = page.evaluate("() => [video.currentTime, video.duration]")
        return state
    finally:
        browser.close()
        playwright.stop()


@pytest.mark.player
def test_upload_resume_playable_ready_and_the_ladder_plays(tmp_path: Path) -> None:
    root = tmp_path / "library"
    root.mkdir()
    source = write(
        tmp_path / "holiday.mp4",
        SynthSpec(duration=12, width=640, height=360, fps=Fraction(25), noise=24, faststart=True),
    )
    data = source.read_bytes()
    assert len(data) > 3 * MB  # several 1 MB chunks
    expected = hashlib.new("md5", data, usedforsecurity=False).hexdigest()

    server = run_server(_settings(root), tmp_path / "gateway.log")
    try:
        token = signed_in(SECRET, f"e2e-{uuid.uuid4().hex[:8]}")
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(
            f"{server.base}/api/v1/videos",
            json={"title": "holiday", "privacy": "public"},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        video_id = r.json()["video"]["id"]
        tus = tus_client.TusClient(f"{server.base}/api/v1/uploads", headers=auth)
        with source.open("rb") as stream:
            first = tus.uploader(
                file_stream=stream,
                chunk_size=MB,
                metadata={"video_id": video_id, "filename": "holiday.mp4"},
                upload_checksum=True,
            )
            first.upload_chunk()
            first.upload_chunk()  # ... and the client goes away
        url = first.url
        assert urlsplit(url).path.startswith("/api/v1/uploads/")
        with source.open("rb") as stream:  # a new client resumes from the server's offset
            resumed = tus.uploader(file_stream=stream, url=url, chunk_size=MB)
            assert resumed.offset == 2 * MB
            resumed.upload()
        playable = _wait(server.base, video_id, auth, "playable", "ready")
        assert playable["duration"] == pytest.approx(12.0, abs=0.1)
        ready = _wait(server.base, video_id, auth, "ready")
        assert [r["height"] for r in ready["renditions"]] == [360, 240, 144]
        state = _play_switching(server.base, f"/v/{video_id}/master.m3u8")
        assert state["fatal"] is None, state
        assert state["ended"], state
        assert state["played"][0] == pytest.approx(state["played"][1], abs=0.1)
        heights = [s["height"] for s in state["switched"]]
        assert 360 in heights, state["switched"]
        assert 144 in heights, state["switched"]
        assert [e for e in state["errors"] if "bufferSeekOverHole" not in e["text"]] == []
    finally:
        stop_server(server)

    async def stored() -> tuple[str | None, str | None]:
        catalog = Catalog(engines.create(TEST_CATALOG))
        try:
            video = await catalog.get_video(video_id)
            assert video is not None
            return video.original_md5, video.original_path
        finally:
            await catalog.close()

    md5, original = asyncio.run(stored())
    assert md5 == expected
    assert (root / str(original)).read_bytes() == data
