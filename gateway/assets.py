"""What a playback URL's asset names: a library path (``/vod/``) or a catalog video (``/v/``).

Both resolve to the same things — a ladder of renditions and single renditions — so one set
of playback routes serves both. A catalog video plays when it is ``playable`` or ``ready``;
``public`` and ``unlisted`` videos play without a token; ``private`` ones need a signed playback
token (``?token=``) granting that video; with ``vod.require_token`` every path-mode asset does.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from auth.playback import PlaybackSigner, for_path, for_video
from backends.cache import Entry, keys
from backends.catalog import Catalog
from backends.catalog.records import storage_folder
from backends.catalog.store import PLAYABLE
from backends.errors import Forbidden, MediaNotFound
from gateway.library import Library, Rendition


class Assets(Protocol):
    scope: str  # part of every playlist cache key: the two URL spaces never share entries

    async def admit(self, asset: str, token: str | None, client_ip: str | None) -> bool:
        """Forbidden unless this request may play ``asset``; True when it needed a token (its
        playlists then must not be cached by shared caches: they carry the token)."""
        ...

    async def ladder(self, asset: str) -> list[tuple[str, Rendition]]: ...

    async def rendition(self, asset: str, name: str, fresh: bool) -> Rendition: ...

    def home(self, asset: str) -> str:
        """The library path whose purge drops this asset's playlists."""
        ...


def _verify(
    signer: PlaybackSigner | None, token: str | None, subject: str, client_ip: str | None
) -> None:
    if signer is None:
        raise Forbidden("signed playback is not configured on this gateway (auth.jwt_secret)")
    if not token:
        raise Forbidden("this video needs a signed playback URL (?token=)")
    signer.verify(token, subject, client_ip)


class PathAssets:
    scope = "vod"

    def __init__(
        self, library: Library, signer: PlaybackSigner | None = None, required: bool = False
    ) -> None:
        self.library = library
        self.signer = signer
        self.required = required

    async def admit(self, asset: str, token: str | None, client_ip: str | None) -> bool:
        if not self.required:
            return False
        _verify(self.signer, token, for_path(asset), client_ip)
        return True

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

    def __init__(
        self, library: Library, catalog: Catalog, signer: PlaybackSigner | None = None
    ) -> None:
        self.library = library
        self.catalog = catalog
        self.signer = signer
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

    async def admit(self, asset: str, token: str | None, client_ip: str | None) -> bool:
        source = await self._source(asset)
        if source.found and source.privacy == "private":
            _verify(self.signer, token, for_video(asset), client_ip)
            return True
        return False

    async def playable(
        self, video_id: str, media: bool = True, public_only: bool = False
    ) -> list[tuple[str, str]]:
        """The renditions of a video that plays now; ``media``: it must have some;
        ``public_only``: refuse a private one (callers without a token check)."""
        source = await self._source(video_id)
        if not source.found or source.status not in PLAYABLE or (media and not source.renditions):
            raise MediaNotFound("no such video, or it is not playable yet")
        if public_only and source.privacy == "private":
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
