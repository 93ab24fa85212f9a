"""What the catalog stores and returns: plain msgspec structs, no ORM objects."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Literal

import msgspec

Privacy = Literal["public", "unlisted", "private"]
Status = Literal["uploading", "uploaded", "processing", "playable", "ready", "failed"]
Role = Literal["user", "admin"]


def storage_folder(video_id: str) -> str:
    """Where an ingested video's files live (DESIGN.md's storage layout)."""
    return f"videos/{video_id}"


def new_id() -> str:
    """An unguessable, URL-safe id: 96 random bits as 16 characters."""
    return secrets.token_urlsafe(12)


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    email: str
    role: Role
    disabled: bool
    created_at: datetime
    notify_ready: bool = False  # email me when a video of mine is ready or failed


class Rendition(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str  # storage path of the MP4, relative to the library root
    bandwidth: int
    width: int | None = None
    height: int | None = None


class Video(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    owner_id: str
    title: str
    description: str
    tags: list[str]
    privacy: Privacy
    status: Status
    failure_reason: str | None
    duration_ms: int | None
    width: int | None
    height: int | None
    original_path: str | None
    original_size: int | None
    original_md5: str | None
    views: int
    likes: int
    comments: int
    created_at: datetime
    updated_at: datetime
    progress: int = 0  # percent of processing done (100 once ready)
    renditions: list[Rendition] = []


class NewVideo(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    description: str = ""
    tags: list[str] = []
    privacy: Privacy = "private"
    status: Status = "uploading"


class VideoChanges(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Fields to change; an unset field (UNSET) is left as it is."""

    title: str | msgspec.UnsetType = msgspec.UNSET
    description: str | msgspec.UnsetType = msgspec.UNSET
    tags: list[str] | msgspec.UnsetType = msgspec.UNSET
    privacy: Privacy | msgspec.UnsetType = msgspec.UNSET
    status: Status | msgspec.UnsetType = msgspec.UNSET
    failure_reason: str | msgspec.UnsetType | None = msgspec.UNSET
    duration_ms: int | msgspec.UnsetType | None = msgspec.UNSET
    width: int | msgspec.UnsetType | None = msgspec.UNSET
    height: int | msgspec.UnsetType | None = msgspec.UNSET
    original_path: str | msgspec.UnsetType | None = msgspec.UNSET
    original_size: int | msgspec.UnsetType | None = msgspec.UNSET
    original_md5: str | msgspec.UnsetType | None = msgspec.UNSET
