"""Requests and responses of the catalog API: msgspec structs, the single source of both the
validation at the edge and the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from backends.catalog import Video

Privacy = Literal["public", "unlisted", "private"]
Status = Literal["uploading", "uploaded", "processing", "playable", "ready", "failed"]
# No control characters (a line: none at all; text: tab and line breaks) and no lone UTF-16
# surrogates: PostgreSQL cannot store NUL, no UTF-8 encoder takes a lone surrogate, and neither
# belongs in a title anyway. Written as regex escapes so the OpenAPI pattern carries them too.
LINE = r"^[^\x00-\x1f\x7f\ud800-\udfff]*$"
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]*$"
Title = Annotated[
    str, Meta(min_length=1, max_length=200, pattern=LINE, description="Shown to viewers")
]
Description = Annotated[str, Meta(max_length=5000, pattern=TEXT)]
Tag = Annotated[str, Meta(min_length=1, max_length=64, pattern=LINE)]
Tags = Annotated[list[Tag], Meta(max_length=20, description="At most 20; case-insensitive")]


class VideoCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    title: Title
    description: Description = ""
    tags: Tags = []
    privacy: Privacy = "private"


class VideoUpdate(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Only the fields given change."""

    title: Title | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    tags: Tags | UnsetType = UNSET
    privacy: Privacy | UnsetType = UNSET


class RenditionOut(Struct, kw_only=True):
    name: str
    bandwidth: int
    width: int | None
    height: int | None


class VideoOut(Struct, kw_only=True):
    id: str
    owner_id: str
    title: str
    description: str
    tags: list[str]
    privacy: Privacy
    status: Status
    failure_reason: str | None
    progress: int  # percent of processing done; 100 when ready
    duration: float | None  # seconds
    width: int | None
    height: int | None
    renditions: list[RenditionOut]
    views: int
    likes: int
    comments: int
    created_at: datetime
    updated_at: datetime
    playback_url: str  # the master playlist, once the video is playable


class UploadTarget(Struct, kw_only=True):
    url: str
    protocol: Literal["tus"] = "tus"
    metadata: dict[str, str]  # Upload-Metadata pairs the upload must carry


class VideoCreated(Struct, kw_only=True):
    video: VideoOut
    upload: UploadTarget


class VideoPage(Struct, kw_only=True):
    items: list[VideoOut]
    next_cursor: str | None  # pass as ?cursor= for the next page; null on the last


class CommentCreate(Struct, forbid_unknown_fields=True, kw_only=True):
    body: Annotated[str, Meta(min_length=1, max_length=2000, pattern=TEXT)]


class CommentOut(Struct, kw_only=True):
    id: str
    video_id: str
    user_id: str
    body: str
    created_at: datetime


class CommentPage(Struct, kw_only=True):
    items: list[CommentOut]
    next_cursor: str | None


class LikeState(Struct, kw_only=True):
    liked: bool
    likes: int


class ViewBeacon(Struct, forbid_unknown_fields=True, kw_only=True):
    """Sent by players: ``start`` when playback starts, ``progress`` every few seconds,
    ``complete`` at the end; ``watched`` is the seconds played since the previous beacon."""

    session: Annotated[str, Meta(min_length=8, max_length=64, pattern="^[A-Za-z0-9_-]+$")]
    event: Literal["start", "progress", "complete"]
    watched: Annotated[float, Meta(ge=0, le=3600)] = 0.0


class Accepted(Struct, kw_only=True):
    accepted: bool


class DayOut(Struct, kw_only=True):
    day: str  # YYYY-MM-DD (UTC)
    views: int
    watch_seconds: float
    completions: int


class VideoStats(Struct, kw_only=True):
    views: int
    watch_seconds: float
    completions: int
    completion_rate: float  # completions / views over the window (0 when no views)
    days: list[DayOut]


class Problem(Struct, omit_defaults=True):
    """RFC 9457 problem details."""

    title: str
    status: int
    detail: str
    type: str = "about:blank"


def video_out(video: Video) -> VideoOut:
    return VideoOut(
        id=video.id,
        owner_id=video.owner_id,
        title=video.title,
        description=video.description,
        tags=video.tags,
        privacy=video.privacy,
        status=video.status,
        failure_reason=video.failure_reason,
        progress=video.progress,
        duration=video.duration_ms / 1000 if video.duration_ms is not None else None,
        width=video.width,
        height=video.height,
        renditions=[
            RenditionOut(name=r.name, bandwidth=r.bandwidth, width=r.width, height=r.height)
            for r in video.renditions
        ],
        views=video.views,
        likes=video.likes,
        comments=video.comments,
        created_at=video.created_at,
        updated_at=video.updated_at,
        playback_url=f"/v/{video.id}/master.m3u8",
    )


def encode(value: object) -> bytes:
    return msgspec.json.encode(value)
