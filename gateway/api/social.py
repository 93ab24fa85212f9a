"""Comments and likes on a video the caller can see."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from backends.catalog import Catalog, social
from backends.errors import Forbidden, NotFound
from gateway.api import http
from gateway.api.models import CommentCreate, CommentOut, CommentPage, LikeState
from gateway.api.videos import Videos


def comment_out(comment: social.Comment) -> CommentOut:
    return CommentOut(
        id=comment.id,
        video_id=comment.video_id,
        user_id=comment.user_id,
        body=comment.body,
        created_at=comment.created_at,
    )


class Social:
    def __init__(self, catalog: Catalog, videos: Videos) -> None:
        self.catalog = catalog
        self.videos = videos

    async def comment(self, request: Request) -> Response:
        who = await self.videos.me(request)
        video, _ = await self.videos.visible(request)
        wanted = await http.body(request, CommentCreate)
        added = await social.add_comment(self.catalog, video.id, who.user_id, wanted.body)
        return http.json(comment_out(added), 201)

    async def comments(self, request: Request) -> Response:
        video, _ = await self.videos.visible(request)
        limit = http.integer(request, "limit", 20, 1, 100)
        scope = "comments:newest"
        items, after = await social.list_comments(
            self.catalog, video.id, limit, http.cursor_in(request, scope)
        )
        page = CommentPage(
            items=[comment_out(c) for c in items], next_cursor=http.cursor_out(after, scope)
        )
        return http.json(page)

    async def delete_comment(self, request: Request) -> Response:
        who = await self.videos.me(request)
        comment = await social.get_comment(self.catalog, request.path_params["comment_id"])
        if comment is None:
            raise NotFound("no such comment")
        if comment.user_id != who.user_id and not who.admin:
            raise Forbidden("only its author or an admin may delete a comment")
        await social.delete_comment(self.catalog, comment)
        return http.no_content()

    async def like(self, request: Request) -> Response:
        who = await self.videos.me(request)
        video, _ = await self.videos.visible(request)
        liked = request.method == "PUT"
        likes = await social.set_like(self.catalog, video.id, who.user_id, liked)
        return http.json(LikeState(liked=liked, likes=likes))

    async def like_state(self, request: Request) -> Response:
        who = await self.videos.me(request)
        video, _ = await self.videos.visible(request)
        # The resource is the caller's like: it exists after PUT and not after DELETE.
        if not await social.liked_by(self.catalog, video.id, who.user_id):
            raise NotFound("you do not like this video")
        current = await self.catalog.get_video(video.id)
        return http.json(LikeState(liked=True, likes=current.likes if current else 0))
