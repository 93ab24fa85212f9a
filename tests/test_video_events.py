"""Live status over Server-Sent Events (GET /api/v1/videos/{id}/events), on SQLite and on
PostgreSQL: events in order while a video is processed, the end after a terminal status or a
deletion, who may watch, keep-alives, the lifetime, and no polling once the client has left."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from auth.tokens import AccessTokens
from backends.catalog import Catalog, NewVideo, Rendition, Video, VideoChanges, processing
from conf import Settings
from gateway.api.events import VideoEvents
from tests.conftest import serving, settings_for

pytestmark = pytest.mark.anyio

SECRET = "e" * 40
TOKENS = AccessTokens({"k1": SECRET.encode()}, "k1", 900)
PROBLEM = "application/problem+json"


class StreamBody(httpx.AsyncByteStream):
    """The body as the app sends it; closing it is the client leaving."""

    def __init__(
        self, chunks: asyncio.Queue[bytes | None], left: asyncio.Event, app: asyncio.Task[None]
    ) -> None:
        self.chunks = chunks
        self.left = left
        self.app = app  # the request, running in the app

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self.chunks.get()) is not None:
            yield chunk

    async def aclose(self) -> None:
        self.left.set()
        with anyio.fail_after(2):  # the app must end the request once the client is gone
            await self.app


class StreamingASGI(httpx.AsyncBaseTransport):
    """httpx to the app in-process, the body read as it streams (httpx.ASGITransport waits for
    the whole body, which an event stream may never finish)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[asyncio.Task[None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future()
        )
        left = asyncio.Event()
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": body, "more_body": False}
            await left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if left.is_set():
                raise OSError("the client has gone")  # as ASGI 2.4 says
            if message["type"] == "http.response.start":
                started.set_result((message["status"], message.get("headers", [])))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    chunks.put_nowait(message["body"])
                if not message.get("more_body", False):
                    chunks.put_nowait(None)

        scope = {
            "type": "http",
            # 2.4: Starlette's own StreamingResponse would not listen for the disconnect.
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "server": ("test", 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
        }
        task = asyncio.create_task(self.app(scope, receive, send))
        self.requests.append(task)
        await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            task.result()  # the app's exception, if it raised before answering
            raise AssertionError("the app ended without an answer")
        status, headers = started.result()
        return httpx.Response(status, headers=headers, stream=StreamBody(chunks, left, task))


@dataclass
class Api:
    http: httpx.AsyncClient
    catalog: Catalog

    async def user(self, email: str, role: str = "user") -> tuple[str, dict[str, str]]:
        user = await self.catalog.create_user(email, role=role)  # type: ignore[arg-type]
        return user.id, {"authorization": f"Bearer {TOKENS.issue(user.id, user.role)}"}

    async def video(self, owner: str, status: str, privacy: str = "private", **more: Any) -> str:
        video = await self.catalog.create_video(owner, NewVideo(title="clip", privacy=privacy))  # type: ignore[arg-type]
        await self.catalog.update_video(video.id, VideoChanges(status=status, **more))  # type: ignore[arg-type]
        return video.id


@pytest.fixture
async def api(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    monkeypatch.setattr(VideoEvents, "poll", 0.05)  # the default, 0.5 s, only slows the tests
    raw = msgspec.to_builtins(settings_for(tmp_path))
    raw["auth"]["jwt_secret"] = SECRET
    async with serving(msgspec.convert(raw, Settings), catalog) as (_, app):
        transport = StreamingASGI(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield Api(http, catalog)
        assert all(task.done() for task in transport.requests)


class Events:
    """Blocks of an event stream as they arrive: an event's fields, or a comment under ``""``."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def block(self) -> dict[str, str] | None:
        """The next block; None when the stream has ended."""
        block: dict[str, str] = {}
        with anyio.fail_after(5):
            async for line in self.lines:
                if not line:
                    if block:
                        return block
                    continue
                name, _, value = line.partition(":")
                block[name] = value.removeprefix(" ")
        assert not block, f"the stream ended inside a block: {block}"
        return None

    async def status(self) -> dict[str, Any]:
        """The data of the next block, which must be a status event."""
        block = await self.block()
        assert block is not None, "the stream ended"
        assert block["event"] == "status", block
        assert block["id"]
        data: dict[str, Any] = msgspec.json.decode(block["data"])
        return data

    async def end(self) -> None:
        assert await self.block() is None


def url(video_id: str, query: str = "") -> str:
    return f"/api/v1/videos/{video_id}/events{query}"


def state(video_id: str, status: str, progress: int = 0, **more: Any) -> dict[str, Any]:
    return {
        "id": video_id,
        "status": status,
        "progress": progress,
        "failure_reason": more.get("failure_reason"),
        "renditions": more.get("renditions", []),
    }


async def test_the_owner_follows_processing_until_ready(api: Api) -> None:
    owner, auth = await api.user("ada@example.com")
    video = await api.video(owner, "uploaded")
    async with api.http.stream("GET", url(video), headers=auth) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        events = Events(r)
        first = await events.block()
        assert first is not None
        assert first["retry"] == "2000"
        assert msgspec.json.decode(first["data"]) == state(video, "uploaded")

        # Each change, as the worker makes it, is one event.
        steps: list[tuple[Callable[[], Awaitable[object]], dict[str, Any]]] = [
            (lambda: api.catalog.update_video(video, VideoChanges(status="processing")),
             state(video, "processing")),
            (lambda: processing.set_progress(api.catalog, video, 10),
             state(video, "processing", 10)),
            (lambda: processing.set_progress(api.catalog, video, 50),
             state(video, "processing", 50)),
            (lambda: api.catalog.set_renditions(video, [
                Rendition(name="360p", path=f"videos/{video}/360p.mp4", bandwidth=800_000),
                Rendition(name="720p", path=f"videos/{video}/720p.mp4", bandwidth=2_500_000),
             ]), state(video, "processing", 50, renditions=["720p", "360p"])),
            # ready before the worker writes 100 %: a ready video is done.
            (lambda: api.catalog.update_video(video, VideoChanges(status="ready")),
             state(video, "ready", 100, renditions=["720p", "360p"])),
        ]  # fmt: skip
        for change, expected in steps:
            await change()
            assert await events.status() == expected
        await events.end()


async def test_a_failed_video_is_one_event(api: Api) -> None:
    owner, auth = await api.user("ada@example.com")
    video = await api.video(owner, "failed", failure_reason="no video stream\nin the file")
    async with api.http.stream("GET", url(video), headers=auth) as r:
        events = Events(r)
        first = await events.block()
        assert first is not None
        assert msgspec.json.decode(first["data"]) == state(
            video, "failed", failure_reason="no video stream\nin the file"
        )
        await events.end()
    # Reconnecting (Last-Event-ID) gets the current state again, under the same id.
    again = await api.http.get(url(video), headers={**auth, "last-event-id": first["id"]})
    assert f"id: {first['id']}\n" in again.text
    # An admin may watch anyone's video.
    _, admin = await api.user("root@example.com", role="admin")
    r = await api.http.get(url(video), headers=admin)
    assert r.status_code == 200
    assert r.text.count("event: status") == 1


async def test_who_may_watch(api: Api) -> None:
    owner, _ = await api.user("ada@example.com")
    _, other = await api.user("bob@example.com")
    private = await api.video(owner, "ready")
    public = await api.video(owner, "ready", privacy="public")
    unlisted_uploading = await api.video(owner, "uploading", privacy="unlisted")
    cases = [
        (private, other, 404),
        (public, other, 403),
        (unlisted_uploading, other, 404),  # GET does not show it yet either
        (public, {}, 401),
        ("no-such-video", other, 404),
        ("bad id!", other, 404),
    ]
    for video, who, status in cases:
        r = await api.http.get(url(video), headers=who)
        assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM), (video, r.text)
        if who and status != 403:  # the same answer as reading the video
            assert (await api.http.get(f"/api/v1/videos/{video}", headers=who)).status_code == 404
    r = await api.http.get(url(public, "?timeout=0"), headers=other)
    assert r.status_code == 403  # who may watch is settled before anything else is read
    cy, cy_auth = await api.user("cy@example.com")
    mine = await api.video(cy, "processing")
    for query in ("?timeout=0", "?timeout=3601", "?timeout=1.5"):
        r = await api.http.get(url(mine, query), headers=cy_auth)
        assert (r.status_code, r.headers["content-type"]) == (400, PROBLEM), query


async def test_a_deleted_video_is_gone(api: Api) -> None:
    owner, auth = await api.user("ada@example.com")
    video = await api.video(owner, "processing")
    async with api.http.stream("GET", url(video), headers=auth) as r:
        events = Events(r)
        assert (await events.status())["status"] == "processing"
        deleted = await api.http.delete(f"/api/v1/videos/{video}", headers=auth)
        assert deleted.status_code == 204
        gone = await events.block()
        assert gone is not None
        assert gone["event"] == "gone"
        assert msgspec.json.decode(gone["data"]) == {"id": video}
        await events.end()


async def test_keep_alive_while_nothing_changes_and_the_stream_ends_in_time(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(VideoEvents, "keep_alive", 0.2)
    owner, auth = await api.user("ada@example.com")
    video = await api.video(owner, "processing")
    started = asyncio.get_running_loop().time()
    async with api.http.stream("GET", url(video, "?timeout=1"), headers=auth) as r:
        events = Events(r)
        assert (await events.status())["status"] == "processing"
        assert await events.block() == {"": "keep-alive"}
        while (block := await events.block()) is not None:
            assert block == {"": "keep-alive"}
    assert 1.0 <= asyncio.get_running_loop().time() - started < 3.0


async def test_polling_stops_when_the_client_leaves(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, auth = await api.user("ada@example.com")
    video = await api.video(owner, "processing")
    looks: list[str] = []
    polling = asyncio.Event()
    get_video = api.catalog.get_video

    async def counted(video_id: str) -> Video | None:
        looks.append(video_id)
        if len(looks) > 3:
            polling.set()
        return await get_video(video_id)

    monkeypatch.setattr(api.catalog, "get_video", counted)
    async with api.http.stream("GET", url(video), headers=auth) as r:
        await Events(r).status()
        with anyio.fail_after(2):
            await polling.wait()
    # Leaving waited for the request to end in the app (StreamBody.aclose): nothing polls now.
    after = len(looks)
    await asyncio.sleep(0.3)  # six poll intervals
    assert len(looks) == after


async def test_the_document_describes_the_stream(api: Api) -> None:
    doc = (await api.http.get("/api/v1/openapi.json")).json()
    operation = doc["paths"]["/api/v1/videos/{video_id}/events"]["get"]
    stream = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
    names = [one["properties"]["event"]["const"] for one in stream["oneOf"]]
    assert names == ["status", "gone"]
    assert [p["name"] for p in operation["parameters"]] == ["video_id", "timeout"]
    assert {"401", "403", "404"} <= set(operation["responses"])


async def test_a_catalog_that_goes_away_ends_the_stream(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    owner, auth = await api.user("ada@example.com")
    video = await api.video(owner, "processing")
    async with api.http.stream("GET", url(video), headers=auth) as r:
        events = Events(r)
        await events.status()

        async def away(video_id: str) -> Video | None:
            raise OSError("connection refused")

        monkeypatch.setattr(api.catalog, "get_video", away)
        await events.end()  # the client reconnects after `retry`, and is told 503 meanwhile
    assert "the catalog cannot answer" in caplog.text
