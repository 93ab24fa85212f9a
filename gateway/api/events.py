"""Live status of a video as Server-Sent Events: ``GET /api/v1/videos/{video_id}/events``.

The stream polls the catalog, the one place the gateway and the workers (other processes,
other machines) meet, and sends a ``status`` event whenever what a watcher sees changes. It
ends after a terminal status (``ready``, ``failed``), with ``gone`` when the video is deleted,
when its ``timeout`` runs out (the client reconnects), and the moment the client leaves.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator

import anyio
import msgspec
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from backends.catalog import Video
from backends.errors import Forbidden, NotFound
from gateway.api import http
from gateway.api.models import Status
from gateway.api.spec import Param
from gateway.api.videos import Videos

log = logging.getLogger("clipsync.api")
TERMINAL = ("ready", "failed")
MAX_LIFETIME = 3600  # seconds; a stream ends then and the client reconnects
TIMEOUT = Param(
    "timeout",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIFETIME},
    "seconds after which the stream ends (default 3600); the client may reconnect",
)
# Sent first: EventSource waits this long (ms) before reconnecting after the stream ends.
RETRY = b"retry: 2000\n"
KEEP_ALIVE = b": keep-alive\n\n"


class VideoStatusEvent(msgspec.Struct, kw_only=True):
    id: str
    status: Status
    progress: int  # percent of processing done; 100 when ready
    failure_reason: str | None
    renditions: list[str]  # names, highest bandwidth first


class VideoGoneEvent(msgspec.Struct, kw_only=True):
    id: str  # the video was deleted while watched


# Event names and their data, for the OpenAPI document.
EVENTS = (("status", VideoStatusEvent), ("gone", VideoGoneEvent))


def status_of(video: Video) -> VideoStatusEvent:
    # The pipeline writes ``ready`` and then 100 %: a poll between the two must not end the
    # stream at 99 %.
    return VideoStatusEvent(
        id=video.id,
        status=video.status,
        progress=100 if video.status == "ready" else video.progress,
        failure_reason=video.failure_reason,
        renditions=[r.name for r in video.renditions],
    )


def event(name: str, data: msgspec.Struct, with_id: bool = True) -> bytes:
    """One event; its data is one line of JSON (msgspec escapes line breaks in strings). The
    id is a digest of the data: the same state has the same id on every replica, so a client
    that reconnects (Last-Event-ID) can tell a repeat of what it had."""
    body = msgspec.json.encode(data)
    lines = [b"event: " + name.encode()]
    if with_id:
        lines.append(b"id: " + hashlib.blake2b(body, digest_size=8).hexdigest().encode())
    lines.append(b"data: " + body)
    return b"\n".join(lines) + b"\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream that stops the moment the client leaves. Starlette listens for the
    disconnect only below ASGI 2.4 and otherwise learns at the next write, up to a keep-alive
    later: this listens whatever the server, and closes the events (no poll outlives it)."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[bytes, None]) -> None:
        # no-cache: every reconnect asks again; X-Accel-Buffering: nginx passes events at once.
        super().__init__(events, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):  # the client left mid-write (ASGI 2.4)
                        await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            await self.events.aclose()


class VideoEvents:
    poll = 0.5  # seconds between looks at the catalog
    keep_alive = 15.0  # seconds of silence before a comment line keeps proxies from closing

    def __init__(self, videos: Videos) -> None:
        self.videos = videos
        self.catalog = videos.catalog

    async def stream(self, request: Request) -> Response:
        video = await self.watchable(request)
        lifetime = http.integer(request, "timeout", MAX_LIFETIME, 1, MAX_LIFETIME)
        # Every stream starts with the current state, a reconnecting one too (Last-Event-ID):
        # the state is all there is to catch up on.
        return EventStream(self.events(video, time.monotonic() + lifetime))

    async def watchable(self, request: Request) -> Video:
        """The video of the URL if the caller owns it or is an admin. Anyone else gets what
        changing the video would answer: 404 where GET is 404 (private, not playable yet), 403
        where the video can be seen."""
        who = await self.videos.me(request)  # anonymous callers learn nothing about the video
        video = await self.catalog.get_video(request.path_params["video_id"])
        if video is None:
            raise NotFound("no such video")
        if who.user_id == video.owner_id or who.admin:
            return video
        await self.videos.visible(request)
        raise Forbidden("only the owner or an admin may follow this video's processing")

    async def events(self, video: Video, deadline: float) -> AsyncGenerator[bytes, None]:
        shown = status_of(video)
        yield RETRY + event("status", shown)
        quiet_since = time.monotonic()
        while shown.status not in TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(min(self.poll, left))
            try:
                # A client leaving cancels the stream: a read cut off mid-way would leave its
                # pooled connection checked out (closed later by the garbage collector, on
                # whatever loop is current then). The read finishes first; it is short.
                with anyio.CancelScope(shield=True):
                    current = await self.catalog.get_video(video.id)
            except (SQLAlchemyError, OSError) as exc:
                # The client reconnects after RETRY and is told (503) while the catalog is away.
                log.warning("events of video %s: the catalog cannot answer: %s", video.id, exc)
                return
            if current is None:
                yield event("gone", VideoGoneEvent(id=video.id), with_id=False)
                return
            now = status_of(current)
            if now != shown:
                shown = now
                yield event("status", shown)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.keep_alive:
                yield KEEP_ALIVE
                quiet_since = time.monotonic()
