"""Every storage backend serves exactly what the local folder serves, and fails cleanly.

Real servers: Azurite (Azure Blob), moto's S3 server, Debian's nginx as the HTTP origin; a
TCP proxy in front of them injects latency and cuts connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import m3u8
import pytest

from backends.storage import RemoteStorage
from conf.settings import StorageSettings
from packager.synth import SynthSpec, write
from tests.backends import (
    CONTAINER,
    PREFIX,
    REMOTE,
    Libraries,
    azure_settings,
    gateway,
    s3_settings,
)
from tests.media import CORRUPT, GOOD
from tests.stores import Azurite, LatencyProxy, MotoS3, StaticHttp

pytestmark = pytest.mark.anyio

# The ETag is derived from the source's version, which each store names its own way.
HEADERS = ("content-type", "content-length", "cache-control", "content-range", "content-encoding")


async def _urls(http: httpx.AsyncClient, asset: str) -> list[tuple[str, dict[str, str]]]:
    """Every playlist, init segment, media segment and I-frame range a player could ask for."""
    found: list[tuple[str, dict[str, str]]] = []
    for suffix in ("", "-ts"):
        master_url = f"/vod/{asset}/master{suffix}.m3u8"
        found.append((master_url, {}))
        master = m3u8.loads((await http.get(master_url)).text)
        base = master_url.rsplit("/", 1)[0]
        media_uris = [p.uri for p in master.playlists] + [p.uri for p in master.iframe_playlists]
        for uri in media_uris:
            playlist_url = f"{base}/{uri}"
            found.append((playlist_url, {}))
            playlist = m3u8.loads((await http.get(playlist_url)).text)
            folder = playlist_url.rsplit("/", 1)[0]
            for segment in playlist.segments:
                headers = {}
                if segment.byterange:
                    length, _, offset = segment.byterange.partition("@")
                    headers["range"] = f"bytes={offset}-{int(offset) + int(length) - 1}"
                found.append((f"{folder}/{segment.uri}", headers))
            for part in playlist.segment_map or []:
                found.append((f"{folder}/{part.uri}", {}))
    return found


def _errors() -> list[tuple[str, dict[str, str]]]:
    return [
        ("/vod/misaligned/master.m3u8", {}),
        *((f"/vod/bad/{kind}.mp4/master.m3u8", {}) for kind in CORRUPT),
        ("/vod/bad/mpeg4_part2.mp4/main/index.m3u8", {}),
        ("/vod/nope.mp4/master.m3u8", {}),
        ("/vod/ladder/999p/index.m3u8", {}),
        ("/vod/h264_30fps_bframes.mp4/main/seg-99.m4s", {}),
        ("/vod/h264_30fps_bframes.mp4/main/seg-1.m4s", {"range": "bytes=99999999-"}),
        ("/vod/h264_30fps_bframes.mp4/main/seg-1.ts", {"range": "bytes=10-20"}),
        ("/vod/ladder/180p/init.mp4", {"if-none-match": "*"}),
    ]


@pytest.mark.parametrize("backend", REMOTE)
async def test_every_response_is_identical_to_the_local_folder(
    backend: str, libraries: Libraries
) -> None:
    async with gateway(libraries.settings("file")) as (local, _):
        requests = [
            r for a in [f"{n}.mp4" for n in GOOD] + ["ladder"] for r in await _urls(local, a)
        ]
        requests += _errors()
        async with gateway(libraries.settings(backend)) as (remote, _):
            for method in ("GET", "HEAD"):
                for url, headers in requests:
                    want = await local.request(method, url, headers=headers)
                    got = await remote.request(method, url, headers=headers)
                    assert got.status_code == want.status_code, (url, got.text)
                    assert got.content == want.content, url
                    for name in HEADERS:
                        assert got.headers.get(name) == want.headers.get(name), (url, name)
                    assert ("etag" in got.headers) == ("etag" in want.headers), url
    assert len(requests) > 150  # the walk found the whole library


async def _playlist(settings: StorageSettings, url: str) -> httpx.Response:
    async with gateway(settings) as (http, _):
        return await http.get(url)


# Outages and slowness: each store behind a proxy that can delay and cut.


def _behind_proxy(
    backend: str,
    request: pytest.FixtureRequest,
    proxy: Callable[[str, int], LatencyProxy],
    **extra: object,
) -> tuple[StorageSettings, LatencyProxy, Callable[[], None], Callable[[], None]]:
    """(settings through the proxy, the proxy, stop the server, start it again)."""
    libraries: Libraries = request.getfixturevalue("libraries")
    libraries.settings(backend)  # uploaded
    limits = {"attempt_timeout": 0.5, "deadline": 2.0, "retry_base_delay": 0.05, **extra}
    if backend == "az":
        azurite: Azurite = request.getfixturevalue("azurite")
        front = proxy("127.0.0.1", azurite.port)
        settings = azure_settings(azurite, f"{front.url_for()}/{azurite.account_name}", **limits)
        return settings, front, azurite.stop, azurite.start
    if backend == "s3":
        moto: MotoS3 = request.getfixturevalue("moto_s3")
        front = proxy("127.0.0.1", moto.port)
        return s3_settings(moto, front.url_for(), **limits), front, moto.stop, moto.start
    nginx = libraries.nginx
    assert nginx is not None
    front = proxy("127.0.0.1", nginx.port)
    settings = StorageSettings(library=front.url_for(), **limits)  # type: ignore[arg-type]
    return settings, front, nginx.stop, nginx.start


SEGMENT = "/vod/h264_30fps_bframes.mp4/main/seg-2.m4s"
PLAYLIST = "/vod/h264_30fps_bframes.mp4/main/index.m3u8"


@pytest.mark.parametrize("backend", ["az", "s3", "http"])
async def test_server_stopped_mid_request_then_back(
    backend: str, request: pytest.FixtureRequest, latency_proxy: Callable[[str, int], LatencyProxy]
) -> None:
    settings, front, stop, start = _behind_proxy(backend, request, latency_proxy)
    async with gateway(settings) as (http, _):
        assert (await http.get(SEGMENT)).status_code == 200
        front.delay = 0.3  # the next request is in flight when the server goes away
        pending = asyncio.create_task(http.get("/vod/h264_2997fps.mp4/main/seg-1.m4s"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        try:
            await asyncio.to_thread(stop)
            front.refuse = True  # connections the proxy holds are cut as well
            response = await pending
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["content-type"] == "application/problem+json"
            assert time.monotonic() - started < 2.0 + 1.0
            # Stopped: refused at once, still a 503 within the deadline.
            t0 = time.monotonic()
            assert (await http.get(PLAYLIST)).status_code == 503
            assert time.monotonic() - t0 < 2.0 + 1.0
        finally:
            front.refuse = False
            front.delay = 0.0
            await asyncio.to_thread(start)
        # Back: served again by the same gateway, no restart.
        again = await http.get("/vod/h264_2997fps.mp4/main/seg-1.m4s")
        assert again.status_code == 200
        assert (await http.get(PLAYLIST)).status_code == 200


@pytest.mark.parametrize("backend", ["az", "s3", "http"])
async def test_injected_latency_holds_the_deadline(
    backend: str, request: pytest.FixtureRequest, latency_proxy: Callable[[str, int], LatencyProxy]
) -> None:
    settings, front, _, _ = _behind_proxy(backend, request, latency_proxy, deadline=1.5)
    async with gateway(settings) as (http, _):
        front.delay = 0.05  # slow but within the per-attempt timeout: served
        assert (await http.get(SEGMENT)).status_code == 200
        front.delay = 5.0  # every answer slower than the deadline
        started = time.monotonic()
        response = await http.get("/vod/h264_60fps_front.mp4/main/seg-1.m4s")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert "timed out" in response.json()["detail"]
        assert 0.4 < elapsed < 1.5 + 0.5
        front.delay = 0.0
        assert (await http.get("/vod/h264_60fps_front.mp4/main/seg-1.m4s")).status_code == 200


async def test_paused_azurite_holds_the_deadline(libraries: Libraries, azurite: Azurite) -> None:
    settings = azure_settings(azurite, attempt_timeout=0.4, deadline=1.2)
    libraries.settings("az")
    async with gateway(settings) as (http, _):
        azurite.pause()
        try:
            started = time.monotonic()
            response = await http.get(PLAYLIST)
            assert response.status_code == 503
            assert time.monotonic() - started < 1.2 + 0.5
        finally:
            azurite.resume()
        assert (await http.get(PLAYLIST)).status_code == 200


async def test_wrong_credentials_are_503_and_never_shown(
    libraries: Libraries, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    libraries.settings("az")
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=" * 2
    connection = azurite.connection_string.replace(azurite.account_key, wrong_key)
    settings = azure_settings(azurite, azure_connection_string=connection)
    caplog.set_level(logging.INFO)
    async with gateway(settings) as (http, _):
        started = time.monotonic()
        response = await http.get(PLAYLIST)
    assert response.status_code == 503
    assert "refused access" in response.json()["detail"]
    assert time.monotonic() - started < 2.0, "a refused credential is not retried"
    for text in [response.text, *(r.getMessage() for r in caplog.records)]:
        assert wrong_key not in text
        assert azurite.account_key not in text


# A file replaced under the same name.

SHORT = SynthSpec(duration=7, width=160, height=96)
LONGER = SynthSpec(duration=13, width=160, height=96)


def _put(
    backend: str, request: pytest.FixtureRequest, name: str, data: bytes, nginx_root: Path
) -> None:
    if backend == "memory":
        import fsspec

        fsspec.filesystem("memory").pipe_file(f"/parity-library/{name}", data)
    elif backend == "az":
        from azure.storage.blob import BlobServiceClient

        azurite: Azurite = request.getfixturevalue("azurite")
        with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            service.get_blob_client(CONTAINER, f"{PREFIX}/{name}").upload_blob(data, overwrite=True)
    elif backend == "s3":
        request.getfixturevalue("moto_s3").client().put_object(
            Bucket=CONTAINER, Key=f"{PREFIX}/{name}", Body=data
        )
    else:
        (nginx_root / name).write_bytes(data)


@pytest.mark.parametrize("backend", REMOTE)
async def test_replaced_file_is_seen_by_the_next_playlist(
    backend: str,
    request: pytest.FixtureRequest,
    libraries: Libraries,
    tmp_path_factory: pytest.TempPathFactory,
    static_http: Callable[[Path], StaticHttp],
) -> None:
    folder = tmp_path_factory.mktemp("replace")
    short, longer = folder / "short.mp4", folder / "longer.mp4"
    write(short, SHORT)
    write(longer, LONGER)
    name = f"swap-{backend}.mp4"
    nginx_root = folder / "root"
    nginx_root.mkdir()
    if backend == "http":
        settings = StorageSettings(library=static_http(nginx_root).base_url, stat_max_age=60)
    else:
        settings = libraries.settings(backend)
        settings = StorageSettings(**{**_fields(settings), "stat_max_age": 60.0})
    _put(backend, request, name, short.read_bytes(), nginx_root)
    # Playlists are answered from cache for cache.playlist_ttl without asking the store.
    async with gateway(settings, {"playlist_ttl": 0}) as (http, _):
        first = await http.get(f"/vod/{name}/main/index.m3u8")
        assert first.status_code == 200
        assert first.text.count("#EXTINF") == 2
        _put(backend, request, name, longer.read_bytes(), nginx_root)
        second = await http.get(f"/vod/{name}/main/index.m3u8")
        assert second.status_code == 200
        assert second.text.count("#EXTINF") == 3, "the playlist reflects the new file"
        assert second.headers["etag"] != first.headers["etag"]
    # A segment request that still holds the old version (stat remembered for 60 s) never
    # mixes the two files: the conditional read fails, the client is told to retry at once,
    # and the retry serves the new file.
    _put(backend, request, name, short.read_bytes(), nginx_root)
    async with gateway(settings) as (http, storage):
        assert (await http.get(f"/vod/{name}/main/seg-1.m4s")).status_code == 200
        _put(backend, request, name, longer.read_bytes(), nginx_root)
        stale = await http.get(f"/vod/{name}/main/seg-2.m4s")
        assert stale.status_code == 503
        assert stale.headers["retry-after"] == "1"
        fresh = await http.get(f"/vod/{name}/main/seg-2.m4s")
        assert fresh.status_code == 200
        assert isinstance(storage, RemoteStorage)
    async with gateway(StorageSettings(library=str(folder))) as (local, _):
        assert fresh.content == (await local.get("/vod/longer.mp4/main/seg-2.m4s")).content


def _fields(settings: StorageSettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in settings.__struct_fields__}


@pytest.mark.parametrize("backend", ["az", "s3", "http"])
def test_clipsync_serve_over_remote_storage(
    backend: str, libraries: Libraries, tmp_path: Path
) -> None:
    """The real server (granian worker, its own event loop, lifespan closing the pools)."""
    from tests.backends import settings_with
    from tests.serving import run_server, stop_server

    local = libraries.root / "ladder" / "180p.mp4"
    server = run_server(settings_with(libraries.settings(backend)), tmp_path / "granian.log")
    try:
        master = httpx.get(f"{server.base}/vod/ladder/master.m3u8", timeout=30)
        segment = httpx.get(f"{server.base}/vod/ladder/180p/seg-2.m4s", timeout=30)
    finally:
        stop_server(server)
    assert master.status_code == 200
    assert master.text.count("#EXT-X-STREAM-INF") == 3
    assert segment.status_code == 200
    assert local.stat().st_size > len(segment.content) > 1000
    log = (tmp_path / "granian.log").read_text()
    assert "Traceback" not in log, log
