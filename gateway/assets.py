"""What a playback URL's asset names: a library path (``/vod/``) or a catalog video (``/v/``).

Both resolve to the same things — a ladder of renditions and single renditions — so one set
of playback routes serves both. A catalog video plays when it is ``playable`` or ``ready``;
``public`` and ``unlisted`` videos play without a token; ``private`` ones need signed
playback, which the accounts issue brings (until then they do not play).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from backends.cache import Entry, keys
from backends.catalog import Catalog
from backends.catalog.records import storage_folder
from backends.catalog.store import PLAYABLE
from backends.errors import Forbidden, MediaNotFound
from gateway.library import Library, Rendition


class Assets(Protocol):
    scope: str  # part of every playlist cache key: the two URL spaces never share entries

    async def ladder(self, asset: str) -> list[tuple[str, Rendition]]: ...

    async def rendition(self, asset: str, name: str, fresh: bool) -> Rendition: ...

    def home(self, asset: str) -> str:
        """The library path whose purge drops this asset's playlists."""
        ...


class PathAssets:
    scope = "vod"

    def __init__(self, library: Library) -> None:
        self.library = library

    async def ladder(self, asset: str) -> list[tuple[str, Rendition]]:
        return await self.library.ladder(asset)

    async def rendition(self, asset: str, name: str, fresh: bool) -> Rendition:
        return await self.library.rendition(asset, name, fresh)

    def home(self, asset: str) -> str:
        return asset


class PlaybackSource(msgspec.Struct, frozen=True, array_like=True):
    found: bool
    privacy: str = ""
    status: str = ""
    renditions: list[tuple[str, str]] = []  # (name, library path), highest bandwidth first


async def _decode(data: bytes) -> PlaybackSource:
    return msgspec.msgpack.decode(data, type=PlaybackSource)


class CatalogAssets:
    scope = "v"

    def __init__(self, library: Library, catalog: Catalog) -> None:
        self.library = library
        self.catalog = catalog
        # Part of every lookup's cache key: computed once, not per segment request.
        self.catalog_uri = catalog.engine.url.render_as_string(hide_password=True)

    async def _source(self, video_id: str) -> PlaybackSource:
        """The video's playback facts, cached like playlists (``cache.playlist_ttl``): a
        segment request does not cost a database query."""

        async def lookup() -> PlaybackSource:
            video = await self.catalog.get_video(video_id)
            if video is None:
                return PlaybackSource(found=False)
            named = [(r.name, r.path) for r in video.renditions]
            return PlaybackSource(True, video.privacy, video.status, named)

        ttl = self.library.settings.cache.playlist_ttl
        entry: Entry[PlaybackSource] = Entry(
            kind="video",
            key=keys.key("video", self.catalog_uri, video_id),
            ttl=ttl,
            tags=self.library.tags(storage_folder(video_id)),
            size=lambda s: 256 + 128 * len(s.renditions),
            encode=msgspec.msgpack.encode if ttl > 0 else None,
            decode=_decode,
        )
        return await self.library.cache.fetch(entry, lookup)

    async def playable(self, video_id: str, media: bool = True) -> list[tuple[str, str]]:
        """The renditions of a video anyone may play now; ``media``: it must have some."""
        source = await self._source(video_id)
        if not source.found or source.status not in PLAYABLE or (media and not source.renditions):
            raise MediaNotFound("no such video, or it is not playable yet")
        if source.privacy == "private":
            raise Forbidden("this video is private")
        return source.renditions

    async def ladder(self, asset: str) -> list[tuple[str, Rendition]]:
        return await self.library.named_ladder(await self.playable(asset))

    async def rendition(self, asset: str, name: str, fresh: bool) -> Rendition:
        for rendition, path in await self.playable(asset):
            if rendition == name:
                return await self.library.file(path, fresh)
        raise MediaNotFound(f"video {asset} has no rendition {name!r}")

    def home(self, asset: str) -> str:
        return storage_folder(asset)
