"""Video endpoints: create, read, change, delete, and the listings."""

from __future__ import annotations

import logging
from typing import cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from auth.tokens import Principal
from backends import paths
from backends.cache import TieredCache, keys
from backends.catalog import Catalog, NewVideo, Video, VideoChanges, search
from backends.catalog.records import storage_folder
from backends.catalog.store import PLAYABLE, Sort
from backends.errors import ClipSyncError, Forbidden, InvalidRequest, NotFound
from backends.storage import Storage
from gateway.api import http
from gateway.api.identity import Identity
from gateway.api.models import (
    UploadTarget,
    VideoCreate,
    VideoCreated,
    VideoPage,
    VideoUpdate,
    video_out,
)

log = logging.getLogger("clipsync.api")
UPLOADS = "/api/v1/uploads"


class Videos:
    def __init__(
        self, catalog: Catalog, identity: Identity, storage: Storage, cache: TieredCache
    ) -> None:
        self.catalog = catalog
        self.identity = identity
        self.storage = storage
        self.cache = cache

    async def who(self, request: Request, required: bool = True) -> Principal | None:
        return await self.identity.of(request, required)

    async def me(self, request: Request) -> Principal:
        return await self.identity.me(request)

    async def visible(self, request: Request) -> tuple[Video, Principal | None]:
        """The video of the URL if this caller may see it; 404 otherwise (a private video's
        existence is not revealed)."""
        video = await self.catalog.get_video(request.path_params["video_id"])
        who = await self.who(request, required=False)
        if video is None:
            raise NotFound("no such video")
        mine = who is not None and (who.user_id == video.owner_id or who.admin)
        listed = video.privacy in ("public", "unlisted") and video.status in PLAYABLE
        if not (mine or listed):
            raise NotFound("no such video")
        return video, who

    async def create(self, request: Request) -> Response:
        who = await self.me(request)
        wanted = await http.body(request, VideoCreate)
        video = await self.catalog.create_video(
            who.user_id,
            NewVideo(
                title=wanted.title,
                description=wanted.description,
                tags=wanted.tags,
                privacy=wanted.privacy,
            ),
        )
        created = VideoCreated(
            video=video_out(video),
            upload=UploadTarget(url=UPLOADS, metadata={"video_id": video.id}),
        )
        return http.json(created, 201, {"location": f"/api/v1/videos/{video.id}"})

    async def get(self, request: Request) -> Response:
        video, _ = await self.visible(request)
        return http.json(video_out(video))

    async def update(self, request: Request) -> Response:
        who = await self.me(request)  # anonymous callers learn nothing about the video
        video, _ = await self.visible(request)
        if who.user_id != video.owner_id:
            raise Forbidden("only the owner may change this video")
        wanted = await http.body(request, VideoUpdate)
        changes = VideoChanges(**msgspec.structs.asdict(wanted))
        changed = await self.catalog.update_video(video.id, changes)
        if changed is None:
            raise NotFound("no such video")
        return http.json(video_out(changed))

    async def delete(self, request: Request) -> Response:
        who = await self.me(request)
        video = await self.catalog.get_video(request.path_params["video_id"])
        if video is None:
            raise NotFound("no such video")
        if who.user_id != video.owner_id and not who.admin:
            if video.privacy == "private":
                raise NotFound("no such video")
            raise Forbidden("only the owner or an admin may delete this video")
        await self.catalog.delete_video(video.id)
        await self._remove_files(video)
        return http.no_content()

    async def _remove_files(self, video: Video) -> None:
        """Storage objects and cached copies of a deleted video. The catalog row is gone
        first: a file left behind by a failure here is unreachable, never served."""
        folder = storage_folder(video.id)
        doomed = {r.path for r in video.renditions}
        if video.original_path:
            doomed.add(video.original_path)
        try:
            stack = [folder]
            while stack:
                parent = stack.pop()
                for entry in await self.storage.list(parent):
                    child = f"{parent}/{entry.name}"
                    (doomed.add if entry.kind == "file" else stack.append)(child)
        except ClipSyncError:
            pass  # nothing stored yet, or the store is away: the listed paths still go
        for path in sorted(doomed):
            try:
                await self.storage.delete(paths.clean(path))
            except ClipSyncError as exc:
                log.warning("deleted video %s: could not remove %s: %s", video.id, path, exc)
        await self.cache.purge(frozenset({keys.tag(self.storage.uri, folder)}))

    async def public(self, request: Request) -> Response:
        sort = http.choice(request, "sort", "newest", ("newest", "most_viewed"))
        limit = http.integer(request, "limit", 20, 1, 100)
        scope = f"public:{sort}"
        items, after = await self.catalog.list_public(
            cast(Sort, sort), limit, http.cursor_in(request, scope)
        )
        page = VideoPage(
            items=[video_out(v) for v in items], next_cursor=http.cursor_out(after, scope)
        )
        return http.json(page)

    async def search(self, request: Request) -> Response:
        query = request.query_params.get("q", "")
        if len(query) > 200:
            raise InvalidRequest("q may be at most 200 characters")
        if not search.words(query):
            raise InvalidRequest("q needs at least one word (letters or digits)")
        limit = http.integer(request, "limit", 20, 1, 100)
        scope = f"search:{keys.digest(query)}"
        after = http.cursor_in(request, scope)
        offset = int(after[0]) if after else 0
        if offset > search.MAX_RESULTS:
            raise InvalidRequest(f"search pages end after {search.MAX_RESULTS} results")
        items = await search.search(self.catalog, query, limit + 1, offset)
        more = (offset + limit, "") if len(items) > limit else None
        page = VideoPage(
            items=[video_out(v) for v in items[:limit]], next_cursor=http.cursor_out(more, scope)
        )
        return http.json(page)

    async def related(self, request: Request) -> Response:
        video, _ = await self.visible(request)
        limit = http.integer(request, "limit", 10, 1, 50)
        items = await search.related(self.catalog, video, limit)
        return http.json(VideoPage(items=[video_out(v) for v in items], next_cursor=None))

    async def mine(self, request: Request) -> Response:
        who = await self.me(request)
        limit = http.integer(request, "limit", 20, 1, 100)
        scope = "mine:newest"
        items, after = await self.catalog.list_owned(
            who.user_id, limit, http.cursor_in(request, scope)
        )
        page = VideoPage(
            items=[video_out(v) for v in items], next_cursor=http.cursor_out(after, scope)
        )
        return http.json(page)
