"""Real players judge the output: ffmpeg/ffprobe over HTTP, hls.js in headless Chromium.

The gateway runs in granian on 127.0.0.1 (``clipsync serve``), exactly as operators run it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import m3u8
import msgspec
import pytest

from tests.conftest import IN_CI, Server, require, run_server, settings_for, stop_server
from tests.media import GOOD, MediaLibrary
from tests.probe import ffprobe, packets_by_type

pytestmark = pytest.mark.player
FORMATS = ("fmp4", "ts")
OFFSET = 10.0  # packager.mux.TIMELINE_OFFSET_SECONDS
FFMPEG_HINT = "apt-get install ffmpeg (scripts/test does it)"


def video_md5(ffmpeg: str, path: Path) -> list[str]:
    """MD5 of every decoded picture, in order."""
    run = subprocess.run(
        [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "framemd5", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [
        line.rsplit(",", 1)[1].strip() for line in run.stdout.splitlines() if line[:1].isdigit()
    ]


def copy_without_warnings(ffmpeg: str, master: str, out: Path) -> None:
    """ffmpeg reads the whole stream from ``master`` into ``out``: no error, not one warning."""
    run = subprocess.run(
        [ffmpeg, "-nostdin", "-v", "warning", "-i", master, "-c", "copy", "-y", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", f"ffmpeg warned:\n{run.stderr}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(GOOD))
def test_ffmpeg_copies_the_stream_without_warnings(
    server: Server, media: MediaLibrary, tmp_path: Path, name: str, fmt: str
) -> None:
    ffmpeg = require("ffmpeg", FFMPEG_HINT)
    source = media.good(name)
    out = tmp_path / "copy.mp4"
    master = f"{server.base}/vod/{name}.mp4/master-{fmt}.m3u8"
    copy_without_warnings(ffmpeg, master, out)
    theirs, ours = packets_by_type(str(source)), packets_by_type(str(out))
    for kind in ("video", "audio"):
        assert len(ours[kind]) == len(theirs[kind]), f"{kind} packet count differs"
    # Same frames in the same order. Audio and fMP4 video carry the source's bytes unchanged;
    # TS video gains in-band AUD and parameter sets, so there the decoded pictures must match.
    for kind in ("video", "audio") if fmt == "fmp4" else ("audio",):
        assert [p["size"] for p in ours[kind]] == [p["size"] for p in theirs[kind]], kind
    if theirs["video"]:
        assert video_md5(ffmpeg, out) == video_md5(ffmpeg, source)
    streams = ffprobe("-show_streams", str(out))["streams"]
    original = ffprobe("-show_streams", str(source))["streams"]
    for ours_s, theirs_s in zip(streams, original, strict=True):
        if ours_s["codec_type"] == "video":
            frame = 1 / float(GOOD[name].fps)
            assert float(ours_s["duration"]) == pytest.approx(
                float(theirs_s["duration"]), abs=frame
            )
            assert ours_s["nb_frames"] == theirs_s["nb_frames"]


def _fetch_segments(base: str, asset: str, fmt: str, tmp: Path) -> list[Path]:
    playlist_url = f"{base}/vod/{asset}/main/index-{fmt}.m3u8"
    playlist = m3u8.loads(httpx.get(playlist_url).text)
    init = httpx.get(f"{base}/vod/{asset}/main/init.mp4").content if fmt == "fmp4" else b""
    files = []
    for number, segment in enumerate(playlist.segments, start=1):
        body = httpx.get(f"{base}/vod/{asset}/main/{segment.uri}").content
        path = tmp / f"seg-{number}.{'mp4' if fmt == 'fmp4' else 'ts'}"
        path.write_bytes(init + body)
        files.append(path)
    return files


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "name", ["h264_30fps_bframes", "h264_2997fps", "h264_irregular_gop", "hevc"]
)
def test_segments_stand_alone_and_continue(
    server: Server, media: MediaLibrary, tmp_path: Path, name: str, fmt: str
) -> None:
    ffmpeg = require("ffmpeg", FFMPEG_HINT)
    source = packets_by_type(str(media.good(name)))["video"]
    segments = _fetch_segments(server.base, f"{name}.mp4", fmt, tmp_path)
    assert len(segments) > 1
    seen: list[dict[str, Any]] = []
    for path in segments:
        decode = subprocess.run(
            [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
            capture_output=True,
            text=True,
        )
        assert decode.returncode == 0, decode.stderr
        assert decode.stderr == "", f"{path.name} does not decode on its own:\n{decode.stderr}"
        video = packets_by_type(str(path))["video"]
        assert video, f"{path.name} has no video"
        assert "K" in video[0]["flags"], f"{path.name} does not start with a keyframe"
        if seen:
            # The next segment starts exactly where the previous one ended: no gap, no overlap.
            previous = seen[-1]
            expected = float(previous["dts_time"]) + float(previous["duration_time"])
            assert float(video[0]["dts_time"]) == pytest.approx(expected, abs=1e-4), path.name
        seen.extend(video)
    # Absolute, continuous timestamps: the source's timeline plus the constant offset.
    assert len(seen) == len(source)
    for ours, theirs in zip(seen, source, strict=True):
        assert float(ours["pts_time"]) == pytest.approx(
            float(theirs["pts_time"]) + OFFSET, abs=2e-5
        )
        assert float(ours["dts_time"]) == pytest.approx(
            float(theirs["dts_time"]) + OFFSET, abs=2e-5
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_iframe_ranges_hold_one_keyframe(
    server: Server, media: MediaLibrary, tmp_path: Path, fmt: str
) -> None:
    name = "h264_30fps_bframes"
    media.good(name)
    base = f"{server.base}/vod/{name}.mp4/main"
    playlist = m3u8.loads(httpx.get(f"{base}/iframes-{fmt}.m3u8").text)
    header_uri = playlist.segment_map[0].uri
    header_range = playlist.segment_map[0].byterange
    header = httpx.get(f"{base}/{header_uri}").content
    if header_range:
        length, offset = (int(x) for x in header_range.split("@"))
        header = header[offset : offset + length]
    for entry in playlist.segments:
        length, offset = (int(x) for x in entry.byterange.split("@"))
        ranged = httpx.get(
            f"{base}/{entry.uri}", headers={"range": f"bytes={offset}-{offset + length - 1}"}
        )
        assert ranged.status_code == 206
        path = tmp_path / f"iframe.{fmt}"
        path.write_bytes(header + ranged.content)
        video = packets_by_type(str(path))["video"]
        assert len(video) >= 1
        assert "K" in video[0]["flags"]


# hls.js in Chromium -----------------------------------------------------------------------

PLAYER_DIR = Path(__file__).parent / "player"
HLSJS = PLAYER_DIR / "node_modules" / "hls.js" / "dist" / "hls.min.js"


@pytest.fixture(scope="module")
def demo_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gateway.cli import DEMO_ASSET, generate_demo

    root = tmp_path_factory.mktemp("demo-library")
    generate_demo(root / DEMO_ASSET, duration=12.0)
    return root


@pytest.fixture(scope="module")
def demo_server(demo_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = demo_library
    running = run_server(settings_for(root), tmp_path_factory.mktemp("demo") / "granian.log")
    yield running
    stop_server(running)


def _browser() -> Any:
    chromium = require("chromium", "apt-get install chromium (scripts/test does it)")
    if not HLSJS.exists():
        message = f"hls.js is not installed: run npm ci in {PLAYER_DIR}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(
        executable_path=chromium,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    return playwright, browser


@pytest.mark.parametrize("master", ["master.m3u8", "master-ts.m3u8"])
def test_hlsjs_plays_the_demo_to_the_end(demo_server: Server, master: str) -> None:
    state, console = _hlsjs_state(demo_server.base, f"/vod/demo/{master}", 90)
    played = state["played"]
    assert state["fatal"] is None, f"{state['fatal']}; console: {console}"
    assert state["ended"], f"did not reach the end: {state}, played {played}; console: {console}"
    assert played[0] == pytest.approx(played[1], abs=0.1)
    assert played[1] == pytest.approx(12.0, abs=0.1)
    assert [level["height"] for level in state["levels"]] == [360, 480, 720]
    assert_no_errors_but_the_startup_skip(state)


def assert_no_errors_but_the_startup_skip(state: dict[str, Any]) -> None:
    # hls.js anchors its timeline on the lowest decode time, so with B-frames the buffer starts
    # one decode delay (two frames here) after 0 and hls.js skips that gap once at start-up.
    # That single skip, at the very start and no longer than the delay, is the only event
    # allowed: any other error, or a gap anywhere else, fails the test.
    startup_skip = [
        e
        for e in state["errors"]
        if e["text"] == "mediaError/bufferSeekOverHole" and e["at"] < 0.2 and e["buffered"] <= 0.07
    ]
    others = [e for e in state["errors"] if e not in startup_skip]
    assert len(startup_skip) <= 1
    assert others == [], f"hls.js reported errors: {state['errors']}"


def test_bad_requests_over_real_http_never_hurt_the_server(
    server: Server, media: MediaLibrary
) -> None:
    """A burst of hostile requests, mixed with good ones, against granian: each gets its 4xx,
    none a 500, the good ones are served meanwhile, and the server is still up afterwards."""
    from tests.media import CORRUPT

    good = "h264_30fps_bframes"
    media.good(good)
    for kind in CORRUPT:
        media.corrupt(kind)
    bad = [(f"/vod/bad/{kind}.mp4/main/seg-1.m4s", 422) for kind in CORRUPT]
    bad += [
        ("/vod/%2e%2e/%2e%2e/etc/passwd/master.m3u8", 404),
        ("/vod/missing.mp4/master.m3u8", 404),
        (f"/vod/{good}.mp4/main/seg-99.m4s", 404),
        (f"/vod/{good}.mp4/main/seg-0.ts", 404),
    ]

    async def burst() -> list[tuple[str, int, int]]:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
            requests = [(path, want, http.get(path)) for path, want in bad * 5]
            requests += [
                (
                    f"/vod/{good}.mp4/main/seg-{n}.m4s",
                    200,
                    http.get(f"/vod/{good}.mp4/main/seg-{n}.m4s"),
                )
                for n in (1, 2, 3)
                for _ in range(5)
            ]
            requests.append(
                (
                    f"/vod/{good}.mp4/main/seg-1.m4s",
                    416,
                    http.get(
                        f"/vod/{good}.mp4/main/seg-1.m4s", headers={"range": "bytes=99999999-"}
                    ),
                )
            )
            replies = await asyncio.gather(*(r for _, _, r in requests))
            return [
                (path, want, reply.status_code)
                for (path, want, _), reply in zip(requests, replies, strict=True)
            ]

    results = asyncio.run(burst())
    wrong = [(path, want, got) for path, want, got in results if want != got]
    assert wrong == []
    assert server.process.poll() is None
    assert httpx.get(f"{server.base}/healthz").status_code == 200


def test_ffmpeg_plays_a_catalog_video(server: Server, media: MediaLibrary, tmp_path: Path) -> None:
    """/v/{id}/: the same packaging, with renditions resolved through the catalog."""
    import asyncio

    from backends.catalog import Catalog, NewVideo, Rendition, VideoChanges, engines
    from tests.conftest import TEST_CATALOG

    ffmpeg = require("ffmpeg", FFMPEG_HINT)
    name = "h264_30fps_bframes"
    source = media.good(name)

    async def seed() -> str:
        catalog = Catalog(engines.create(TEST_CATALOG))
        try:
            owner = await catalog.create_user(f"player-{tmp_path.name}@example.com")
            video = await catalog.create_video(owner.id, NewVideo(title="x", privacy="unlisted"))
            rendition = Rendition(name="main", path=f"{name}.mp4", bandwidth=2_000_000)
            await catalog.set_renditions(video.id, [rendition])
            await catalog.update_video(video.id, VideoChanges(status="ready"))
            return video.id
        finally:
            await catalog.close()

    video_id = asyncio.run(seed())
    out = tmp_path / "copy.mp4"
    master = f"{server.base}/v/{video_id}/master.m3u8"
    copy_without_warnings(ffmpeg, master, out)
    theirs, ours = packets_by_type(str(source)), packets_by_type(str(out))
    for kind in ("video", "audio"):
        assert [p["size"] for p in ours[kind]] == [p["size"] for p in theirs[kind]], kind
    assert video_md5(ffmpeg, out) == video_md5(ffmpeg, source)


def _hlsjs_state(base: str, src: str, seconds: float) -> tuple[dict[str, Any], list[str]]:
    """Plays ``src`` (a URL path with its query) in hls.js on the player page until it ends,
    fails or ``seconds`` pass: the page's state and the browser console."""
    playwright, browser = _browser()
    try:
        page = browser.new_page()
        page.route("**/hls.min.js", lambda route: route.fulfill(path=str(HLSJS)))
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.goto(f"{base}/player?{urlencode({'src': src, 'rate': 4})}")
        deadline = time.monotonic() + seconds
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = page.evaluate("() => window.clipsync")
            if state["ended"] or state["fatal"]:
                break
            time.sleep(0.25)
        state["played"] = page.evaluate("() => [video.currentTime, video.duration]")
        return state, console
    finally:
        browser.close()
        playwright.stop()


def test_hlsjs_plays_a_private_video_from_its_signed_url_until_it_expires(
    demo_library: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import asyncio

    from auth.playback import PlaybackSigner, for_video
    from backends.catalog import Catalog, NewVideo, Rendition, VideoChanges, engines
    from gateway.cli import DEMO_ASSET
    from tests.conftest import TEST_CATALOG

    secret = "player-playback-key-" + "k" * 20
    config = msgspec.to_builtins(settings_for(demo_library))
    config["auth"]["playback_secret"] = secret
    settings = msgspec.convert(config, type(settings_for(demo_library)))
    server = run_server(settings, tmp_path_factory.mktemp("private") / "granian.log")

    async def seed() -> str:
        catalog = Catalog(engines.create(TEST_CATALOG))
        try:
            owner = await catalog.create_user(f"private-{uuid.uuid4().hex[:8]}@example.com")
            video = await catalog.create_video(owner.id, NewVideo(title="p", privacy="private"))
            ladder = [("720p", 3_000_000), ("480p", 1_500_000), ("360p", 800_000)]
            await catalog.set_renditions(
                video.id,
                [Rendition(name=n, path=f"{DEMO_ASSET}/{n}.mp4", bandwidth=b) for n, b in ladder],
            )
            await catalog.update_video(video.id, VideoChanges(status="ready"))
            return video.id
        finally:
            await catalog.close()

    try:
        video_id = asyncio.run(seed())
        master = f"/v/{video_id}/master.m3u8"
        unsigned, _ = _hlsjs_state(server.base, master, 30)
        assert unsigned["fatal"], unsigned  # a private video does not play without a token
        expires = int(time.time()) + 25
        token = PlaybackSigner({"k1": secret.encode()}, "k1").sign(for_video(video_id), expires)
        state, console = _hlsjs_state(server.base, f"{master}?token={token}", 35)
        assert state["fatal"] is None, f"{state['fatal']}; console: {console}"
        assert state["ended"], f"did not reach the end: {state}; console: {console}"
        assert state["played"][0] == pytest.approx(state["played"][1], abs=0.1)
        assert_no_errors_but_the_startup_skip(state)
        time.sleep(max(0.0, expires - time.time() + 1))
        expired, _ = _hlsjs_state(server.base, f"{master}?token={token}", 30)
        assert expired["fatal"], expired  # the same URL, after expiry
        assert expired["fragments"] == 0
    finally:
        stop_server(server)
