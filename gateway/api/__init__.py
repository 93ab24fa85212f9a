"""The catalog API under /api/v1: its endpoint table, routes and OpenAPI document."""

from __future__ import annotations

from starlette.routing import Route

from auth.tokens import AccessTokens
from backends.cache import TieredCache
from backends.catalog import Catalog
from backends.storage import Storage
from gateway.api.models import VideoCreate, VideoCreated, VideoOut, VideoPage, VideoUpdate
from gateway.api.spec import Endpoint, Param, doc_routes, routes
from gateway.api.videos import Videos

VIDEO_ID = Param("video_id", "path", {"type": "string", "maxLength": 64})
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}, "page size")
CURSOR = Param("cursor", "query", {"type": "string", "maxLength": 512}, "next_cursor of a page")
SORT = Param("sort", "query", {"type": "string", "enum": ["newest", "most_viewed"]})


def endpoints(videos: Videos) -> list[Endpoint]:
    return [
        Endpoint(
            "POST",
            "/videos",
            "Create a video (then upload its file)",
            videos.create,
            VideoCreated,
            201,
            VideoCreate,
            "required",
            errors=(400, 409, 413),
        ),
        Endpoint(
            "GET",
            "/videos",
            "Public videos that play",
            videos.public,
            VideoPage,
            params=(SORT, LIMIT, CURSOR),
        ),
        Endpoint(
            "GET",
            "/videos/{video_id}",
            "A video",
            videos.get,
            VideoOut,
            auth="optional",
            params=(VIDEO_ID,),
            errors=(401, 404),
        ),
        Endpoint(
            "PATCH",
            "/videos/{video_id}",
            "Change a video (owner)",
            videos.update,
            VideoOut,
            body=VideoUpdate,
            auth="required",
            params=(VIDEO_ID,),
            errors=(400, 403, 404, 413),
        ),
        Endpoint(
            "DELETE",
            "/videos/{video_id}",
            "Delete a video with its files (owner or admin)",
            videos.delete,
            None,
            204,
            auth="required",
            params=(VIDEO_ID,),
            errors=(403, 404),
        ),
        Endpoint(
            "GET",
            "/me/videos",
            "My videos, whatever their status",
            videos.mine,
            VideoPage,
            auth="required",
            params=(LIMIT, CURSOR),
        ),
    ]


def api_routes(
    catalog: Catalog, tokens: AccessTokens | None, storage: Storage, cache: TieredCache
) -> list[Route]:
    table = endpoints(Videos(catalog, tokens, storage, cache))
    return routes(table) + doc_routes(table)
