"""The catalog API over HTTP, on SQLite and on PostgreSQL: videos, listings, ownership, bad
input (always a clear 4xx, never a changed row) and the OpenAPI document."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text

from auth.tokens import AccessTokens
from backends.catalog import Catalog, VideoChanges
from tests.conftest import serving, settings_for
from tests.media import MediaLibrary

pytestmark = pytest.mark.anyio

SECRET = "s" * 40
TOKENS = AccessTokens({"k1": SECRET.encode()}, "k1", 900)


@dataclass
class Api:
    http: httpx.AsyncClient
    catalog: Catalog
    root: Path
    state: Any = None

    async def user(self, email: str, role: str = "user") -> dict[str, str]:
        user = await self.catalog.create_user(email, role=role)  # type: ignore[arg-type]
        return {"authorization": f"Bearer {TOKENS.issue(user.id, user.role)}", "id": user.id}

    async def rows(self, table: str) -> list[tuple[object, ...]]:
        async with self.catalog.engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(f"SELECT * FROM {table}"))]  # noqa: S608


def auth(user: dict[str, str]) -> dict[str, str]:
    return {"authorization": user["authorization"]}


@pytest.fixture
async def api(catalog: Catalog, tmp_path: Path) -> AsyncIterator[Api]:
    settings = settings_for(tmp_path, {"playlist_ttl": 0.2})
    settings = type(settings)(
        storage=settings.storage,
        cache=settings.cache,
        catalog=settings.catalog,
        auth=type(settings.auth)(jwt_secret=SECRET),
    )
    async with serving(settings, catalog) as (http, app):
        yield Api(http, catalog, tmp_path, app.state)


@pytest.fixture
def app_state(api: Api) -> Any:
    return api.state


async def make(api: Api, user: dict[str, str], **fields: object) -> dict[str, object]:
    r = await api.http.post(
        "/api/v1/videos", json={"title": "A video", **fields}, headers=auth(user)
    )
    assert r.status_code == 201, r.text
    video: dict[str, object] = r.json()["video"]
    return video


async def test_create_get_update_delete(api: Api) -> None:
    ada = await api.user("ada@example.com")
    r = await api.http.post(
        "/api/v1/videos",
        json={"title": "Harbour", "description": "Boats", "tags": ["sea", "Sea", "boats"]},
        headers=auth(ada),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    video = body["video"]
    assert r.headers["location"] == f"/api/v1/videos/{video['id']}"
    assert body["upload"] == {
        "url": "/api/v1/uploads",
        "protocol": "tus",
        "metadata": {"video_id": video["id"]},
    }
    assert video["tags"] == ["sea", "boats"]
    assert video["privacy"] == "private"
    assert video["status"] == "uploading"
    assert video["owner_id"] == ada["id"]

    # Private and not playable: the owner sees it, nobody else learns it exists.
    url = f"/api/v1/videos/{video['id']}"
    assert (await api.http.get(url, headers=auth(ada))).json()["title"] == "Harbour"
    assert (await api.http.get(url)).status_code == 404
    bob = await api.user("bob@example.com")
    assert (await api.http.get(url, headers=auth(bob))).status_code == 404

    r = await api.http.patch(
        url, json={"title": "Harbour at dawn", "privacy": "public"}, headers=auth(ada)
    )
    assert r.status_code == 200, r.text
    assert r.json()["title"] == "Harbour at dawn"
    assert r.json()["description"] == "Boats"

    # Someone else's video: refused, unchanged.
    await api.catalog.update_video(video["id"], VideoChanges(status="ready"))
    r = await api.http.patch(url, json={"title": "mine now"}, headers=auth(bob))
    assert r.status_code == 403
    r = await api.http.delete(url, headers=auth(bob))
    assert r.status_code == 403
    assert (await api.http.get(url)).json()["title"] == "Harbour at dawn"

    assert (await api.http.delete(url, headers=auth(ada))).status_code == 204
    assert (await api.http.get(url, headers=auth(ada))).status_code == 404
    assert await api.rows("video_tags") == []


async def test_delete_removes_files_and_admin_may_delete(api: Api) -> None:
    ada = await api.user("ada@example.com")
    admin = await api.user("root@example.com", role="admin")
    video = await make(api, ada)
    folder = api.root / "videos" / str(video["id"])
    (folder / "thumbs").mkdir(parents=True)
    for name in ("720p.mp4", "360p.mp4", "thumbs/poster.jpg"):
        (folder / name).write_bytes(b"x")
    other = api.root / "videos" / "someone-else"
    other.mkdir()
    (other / "720p.mp4").write_bytes(b"x")
    r = await api.http.delete(f"/api/v1/videos/{video['id']}", headers=auth(admin))
    assert r.status_code == 204
    assert [p for p in folder.rglob("*") if p.is_file()] == []
    assert (other / "720p.mp4").exists()


async def test_listings_page_with_cursors(api: Api) -> None:
    ada = await api.user("ada@example.com")
    ids = []
    for n in range(7):
        video = await make(api, ada, title=f"v{n}", privacy="public")
        ids.append(video["id"])
        await api.catalog.update_video(str(video["id"]), VideoChanges(status="ready"))
    hidden = await make(api, ada, title="still uploading", privacy="public")
    unlisted = await make(api, ada, title="unlisted", privacy="unlisted")
    async with api.catalog.engine.begin() as conn:
        for n, video_id in enumerate(ids):
            await conn.execute(
                text("UPDATE videos SET views = :v WHERE id = :id"),
                {"v": (n * 37) % 11, "id": video_id},
            )

    for sort in ("newest", "most_viewed"):
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "3", "sort": sort, **({"cursor": cursor} if cursor else {})}
            r = await api.http.get("/api/v1/videos", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            seen += [v["id"] for v in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids), sort  # each once; none hidden or unlisted
        assert hidden["id"] not in seen
        assert unlisted["id"] not in seen
        if sort == "newest":
            assert seen == list(reversed(ids))
        else:
            views = {video_id: (n * 37) % 11 for n, video_id in enumerate(ids)}
            assert [views[i] for i in seen] == sorted(views.values(), reverse=True)

    r = await api.http.get("/api/v1/me/videos", params={"limit": "100"}, headers=auth(ada))
    assert len(r.json()["items"]) == 9  # every one of mine, whatever its state


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "missing required field `title`"),
        ({"title": ""}, "length >= 1"),
        ({"title": "x" * 201}, "length <= 200"),
        ({"title": 5}, "Expected `str`"),
        ({"title": "t", "tags": ["a"] * 21}, "length <= 20"),
        ({"title": "t", "tags": ["x" * 65]}, "length <= 64"),
        ({"title": "t", "privacy": "secret"}, "Invalid enum value 'secret'"),
        ({"title": "t", "owner_id": "someone"}, "unknown field `owner_id`"),
        ({"title": "t", "description": "d" * 5001}, "length <= 5000"),
        # PostgreSQL cannot store NUL; no UTF-8 encoder takes a lone surrogate.
        ({"title": "a\u0000b"}, "matching regex"),
        ({"title": "two\nlines"}, "matching regex"),
        ({"title": "t", "tags": ["a\u0000"]}, "matching regex"),
        ({"title": "t", "description": "bell\u0007"}, "matching regex"),
        ([], "Expected `object`"),
    ],
)
async def test_bad_bodies_are_400_and_change_nothing(api: Api, body: object, detail: str) -> None:
    ada = await api.user("ada@example.com")
    r = await api.http.post("/api/v1/videos", json=body, headers=auth(ada))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]
    assert await api.rows("videos") == []


async def test_raw_bad_bodies(api: Api) -> None:
    ada = await api.user("ada@example.com")
    video = await make(api, ada)
    before = await api.rows("videos")
    url = f"/api/v1/videos/{video['id']}"
    cases = [
        (b"{not json", "application/json", 400),
        (b'{"title": "t"}', "text/plain", 400),
        (b'{"title": "' + b"x" * 70_000 + b'"}', "application/json", 413),
        ('{"title": "\ud800"}'.encode("utf-8", "surrogatepass"), "application/json", 400),
        # The JSON escape of a lone surrogate is valid JSON, but not storable text.
        (b'{"title": "\\ud800"}', "application/json", 400),
        (b'{"tags": ["ok", "\\udfff"]}', "application/json", 400),
    ]
    for content, kind, status in cases:
        r = await api.http.patch(url, content=content, headers={**auth(ada), "content-type": kind})
        assert r.status_code == status, (content[:20], r.text)
    assert await api.rows("videos") == before


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "W10"},  # base64 of []
        {"cursor": "WyJtaW5lOm5ld2VzdCIsIjIwMjAtMDEtMDEiLCJ4Il0"},  # another listing's cursor
        {"cursor": "x" * 600},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"sort": "oldest"},
        {"sort": "newest'; DROP TABLE videos;--"},
    ],
)
async def test_bad_listing_parameters_are_400(api: Api, params: dict[str, str]) -> None:
    r = await api.http.get("/api/v1/videos", params=params)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Basic abc",
        "Bearer not.a.jwt",
        "Bearer " + "x" * 10_000,
        "Bearer "
        + jwt.encode({"sub": "u", "exp": time.time() + 86_400}, "wrong" * 8, algorithm="HS256"),
        "Bearer " + TOKENS.issue("u", "user", now=time.time() - 3600),  # expired
        "Bearer " + jwt.encode({"sub": "u"}, None, algorithm="none"),
    ],
)
async def test_bad_credentials_are_401(api: Api, header: str | None) -> None:
    headers = {"authorization": header} if header is not None else {}
    r = await api.http.post("/api/v1/videos", json={"title": "t"}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert await api.rows("videos") == []


async def test_unknown_ids_are_404(api: Api) -> None:
    ada = await api.user("ada@example.com")
    for url in (
        "/api/v1/videos/nope",
        "/api/v1/videos/%27%20OR%201%3D1--",
        "/api/v1/videos/a%00b",
        "/api/v1/videos/%ED%A0%80",
        "/api/v1/videos/" + "x" * 300,
    ):
        assert (await api.http.get(url)).status_code == 404
        assert (
            await api.http.patch(url, json={"title": "x"}, headers=auth(ada))
        ).status_code == 404
        assert (await api.http.delete(url, headers=auth(ada))).status_code == 404


async def test_openapi_document_and_docs_page(api: Api) -> None:
    r = await api.http.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    create = doc["paths"]["/api/v1/videos"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/VideoCreate"
    }
    assert {"201", "400", "401", "503"} <= set(create["responses"])
    title = doc["components"]["schemas"]["VideoCreate"]["properties"]["title"]
    assert title["maxLength"] == 200
    page = await api.http.get("/api/v1/docs")
    assert "/api/v1/videos/{video_id}" in page.text


async def test_a_catalog_that_cannot_answer_is_503(tmp_path: Path) -> None:
    from backends.catalog import engines

    # A database file with no schema: every query fails inside the database.
    catalog = Catalog(engines.create(f"sqlite:///{tmp_path}/empty.sqlite3"))
    async with serving(settings_for(tmp_path), catalog) as (http, _):
        r = await http.get("/api/v1/videos")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert "retry" in r.json()["detail"]


async def ready_video(api: Api, user: dict[str, str], **fields: object) -> str:
    video = await make(api, user, privacy="public", **fields)
    await api.catalog.update_video(str(video["id"]), VideoChanges(status="ready"))
    return str(video["id"])


async def test_search_ranks_and_shapes_results(api: Api) -> None:
    ada = await api.user("ada@example.com")
    in_title = await ready_video(api, ada, title="Sailing to the harbour", tags=["travel"])
    in_tags = await ready_video(api, ada, title="A long day", tags=["harbour"])
    in_text = await ready_video(api, ada, title="Morning", description="we passed a harbour")
    await make(api, ada, title="Harbour, private")  # never found by others
    await ready_video(api, ada, title="Mountains")

    r = await api.http.get("/api/v1/search", params={"q": "harbours"})  # stemmed
    assert r.status_code == 200, r.text
    found = [v["id"] for v in r.json()["items"]]
    assert found == [in_title, in_tags, in_text]  # title > tags > description
    assert set(r.json()["items"][0]) == set(
        (await api.http.get(f"/api/v1/videos/{in_title}")).json()
    )

    two = await api.http.get("/api/v1/search", params={"q": "harbour sailing"})
    assert [v["id"] for v in two.json()["items"]] == [in_title]  # every word must match

    page = await api.http.get("/api/v1/search", params={"q": "harbour", "limit": "2"})
    rest = await api.http.get(
        "/api/v1/search",
        params={"q": "harbour", "limit": "2", "cursor": page.json()["next_cursor"]},
    )
    assert [v["id"] for v in page.json()["items"] + rest.json()["items"]] == found
    assert rest.json()["next_cursor"] is None


@pytest.mark.parametrize(
    "q",
    [
        "harbour' OR 1=1 --",
        '"harbour',
        "harbour AND NOT boat",
        "harbour*",
        "title:harbour",
        "harbour)",
        "HARBOUR",
        "harbour\u0000",
        "hárbour",  # the accent is dropped by SQLite's tokenizer, not by PostgreSQL's
    ],
)
async def test_search_takes_any_text_as_words(api: Api, q: str) -> None:
    ada = await api.user("ada@example.com")
    await ready_video(api, ada, title="Harbour")
    before = await api.rows("videos")
    r = await api.http.get("/api/v1/search", params={"q": q})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["items"], list)
    assert await api.rows("videos") == before


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "!!! ..."},
        {"q": "x" * 201},
        {"q": "a", "cursor": "bad"},
        {"q": "a", "limit": "0"},
    ],
)
async def test_bad_searches_are_400(api: Api, params: dict[str, str]) -> None:
    r = await api.http.get("/api/v1/search", params=params)
    assert r.status_code == 400, r.text


async def test_comments(api: Api) -> None:
    ada, bob = await api.user("ada@example.com"), await api.user("bob@example.com")
    admin = await api.user("root@example.com", role="admin")
    video = await ready_video(api, ada)
    url = f"/api/v1/videos/{video}/comments"
    ids = []
    for n in range(5):
        r = await api.http.post(url, json={"body": f"comment {n} 🎬"}, headers=auth(bob))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    first = await api.http.get(url, params={"limit": "3"})
    second = await api.http.get(url, params={"limit": "3", "cursor": first.json()["next_cursor"]})
    listed = [c["id"] for c in first.json()["items"] + second.json()["items"]]
    assert listed == list(reversed(ids))
    assert (await api.http.get(f"/api/v1/videos/{video}")).json()["comments"] == 5

    assert (
        await api.http.delete(f"/api/v1/comments/{ids[0]}", headers=auth(ada))
    ).status_code == 403
    assert (
        await api.http.delete(f"/api/v1/comments/{ids[0]}", headers=auth(bob))
    ).status_code == 204
    assert (
        await api.http.delete(f"/api/v1/comments/{ids[1]}", headers=auth(admin))
    ).status_code == 204
    assert (
        await api.http.delete(f"/api/v1/comments/{ids[1]}", headers=auth(bob))
    ).status_code == 404
    assert (await api.http.get(f"/api/v1/videos/{video}")).json()["comments"] == 3

    for body in ({"body": ""}, {"body": "x" * 2001}, {"body": 1}, {"text": "hi"}):
        assert (await api.http.post(url, json=body, headers=auth(bob))).status_code == 400
    assert (await api.http.post(url, json={"body": "hi"})).status_code == 401
    private = str((await make(api, ada, title="private"))["id"])
    r = await api.http.post(
        f"/api/v1/videos/{private}/comments", json={"body": "hi"}, headers=auth(bob)
    )
    assert r.status_code == 404
    assert (await api.http.get(f"/api/v1/videos/{video}")).json()["comments"] == 3


async def test_likes_are_idempotent(api: Api) -> None:
    ada, bob = await api.user("ada@example.com"), await api.user("bob@example.com")
    video = await ready_video(api, ada)
    url = f"/api/v1/videos/{video}/like"
    for _ in range(3):
        r = await api.http.put(url, headers=auth(bob))
        assert r.json() == {"liked": True, "likes": 1}
    assert (await api.http.put(url, headers=auth(ada))).json()["likes"] == 2
    assert (await api.http.get(url, headers=auth(bob))).json() == {"liked": True, "likes": 2}
    for _ in range(2):
        assert (await api.http.delete(url, headers=auth(bob))).json() == {
            "liked": False,
            "likes": 1,
        }
    assert (await api.http.get(url, headers=auth(bob))).status_code == 404  # no like of mine
    assert (await api.http.get(f"/api/v1/videos/{video}")).json()["likes"] == 1
    assert (await api.http.put("/api/v1/videos/nope/like", headers=auth(bob))).status_code == 404
    assert (await api.http.put(url)).status_code == 401


async def test_playback_through_the_catalog(api: Api, media: MediaLibrary) -> None:
    import shutil

    from backends.catalog import Rendition

    ada = await api.user("ada@example.com")
    video = await ready_video(api, ada, title="ladder")
    folder = api.root / "videos" / video
    folder.mkdir(parents=True)
    renditions = []
    for name, bandwidth in (("360p", 800_000), ("240p", 400_000)):
        shutil.copy(media.ladder() / f"{name}.mp4", folder / f"{name}.mp4")
        renditions.append(
            Rendition(name=name, path=f"videos/{video}/{name}.mp4", bandwidth=bandwidth)
        )
    await api.catalog.set_renditions(video, renditions)

    master = await api.http.get(f"/v/{video}/master.m3u8")
    assert master.status_code == 200, master.text
    assert "360p/index.m3u8" in master.text
    assert "240p/index.m3u8" in master.text
    media_playlist = await api.http.get(f"/v/{video}/360p/index.m3u8")
    assert media_playlist.status_code == 200
    segment = await api.http.get(f"/v/{video}/360p/seg-1.m4s")
    assert segment.status_code == 200
    # The very bytes path mode serves for the same file.
    same = await api.http.get(f"/vod/videos/{video}/360p/seg-1.m4s")
    assert same.content == segment.content
    assert (await api.http.get(f"/v/{video}/720p/index.m3u8")).status_code == 404

    url = f"/api/v1/videos/{video}"
    await api.http.patch(url, json={"privacy": "unlisted"}, headers=auth(ada))
    await asyncio.sleep(0.3)  # past the cached lookup (cache.playlist_ttl in these tests)
    assert (await api.http.get(f"/v/{video}/360p/seg-2.m4s")).status_code == 200
    await api.http.patch(url, json={"privacy": "private"}, headers=auth(ada))
    await asyncio.sleep(0.3)
    private = await api.http.get(f"/v/{video}/master.m3u8")
    assert private.status_code == 403
    assert private.headers["content-type"] == "application/problem+json"

    other = await make(api, ada, title="still uploading", privacy="public")
    for path in (f"/v/{other['id']}/master.m3u8", "/v/nope/master.m3u8", "/v/nope/360p/seg-1.m4s"):
        assert (await api.http.get(path)).status_code == 404, path

    await api.http.patch(url, json={"privacy": "public"}, headers=auth(ada))
    assert (await api.http.delete(url, headers=auth(ada))).status_code == 204
    # Deleting drops the cached lookup and playlists at once, and the files.
    assert (await api.http.get(f"/v/{video}/master.m3u8")).status_code == 404
    assert not (folder / "360p.mp4").exists()


async def _private_ladder(api: Api, media: MediaLibrary, owner: dict[str, str]) -> str:
    import shutil

    from backends.catalog import Rendition

    video = await ready_video(api, owner, title="secret")
    folder = api.root / "videos" / video
    folder.mkdir(parents=True)
    shutil.copy(media.ladder() / "240p.mp4", folder / "240p.mp4")
    await api.catalog.set_renditions(
        video, [Rendition(name="240p", path=f"videos/{video}/240p.mp4", bandwidth=400_000)]
    )
    await api.catalog.update_video(video, VideoChanges(privacy="private"))
    return video


async def test_signed_playback_of_private_videos(api: Api, media: MediaLibrary) -> None:
    from auth.playback import PlaybackSigner, for_video

    ada, bob = await api.user("ada@example.com"), await api.user("bob@example.com")
    video = await _private_ladder(api, media, ada)
    paths = ("master.m3u8", "240p/index.m3u8", "240p/init.mp4", "240p/seg-1.m4s")
    for path in paths:
        r = await api.http.get(f"/v/{video}/{path}")
        assert r.status_code == 403, path
        assert "signed playback" in r.json()["detail"]
    grant = f"/api/v1/videos/{video}/playback"
    assert (await api.http.post(grant, json={})).status_code == 404  # anonymous: not revealed
    assert (await api.http.post(grant, json={}, headers=auth(bob))).status_code == 404
    r = await api.http.post(grant, json={}, headers=auth(ada))
    assert r.status_code == 201, r.text
    signed = r.json()
    token = signed["token"]
    assert signed["url"].endswith(f"/v/{video}/master.m3u8?token={token}")
    master = await api.http.get(f"/v/{video}/master.m3u8?token={token}")
    assert master.status_code == 200
    assert master.headers["cache-control"].startswith("private")
    assert f"240p/index.m3u8?token={token}" in master.text
    media_playlist = await api.http.get(f"/v/{video}/240p/index.m3u8?token={token}")
    assert f"seg-1.m4s?token={token}" in media_playlist.text
    for path in paths[2:]:
        assert (await api.http.get(f"/v/{video}/{path}?token={token}")).status_code == 200
    # Another video's token, a tampered one, an expired one, one bound elsewhere: 403.
    other = await _private_ladder(api, media, ada)
    theirs = await api.http.post(f"/api/v1/videos/{other}/playback", json={}, headers=auth(ada))
    signer = PlaybackSigner({"k1": SECRET.encode()}, "k1")
    bad = {
        "not valid for this video": theirs.json()["token"],
        "invalid playback token": token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "expired": signer.sign(for_video(video), int(time.time()) - 1),
        "not valid from this address": signer.sign(
            for_video(video), int(time.time()) + 60, "203.0.113.0/24"
        ),
    }
    for reason, wrong in bad.items():
        r = await api.http.get(f"/v/{video}/240p/seg-1.m4s?token={wrong}")
        assert r.status_code == 403, reason
        assert reason in r.json()["detail"]
    # Bound to the caller's own address (the test client is 127.0.0.1): it plays.
    r = await api.http.post(grant, json={"bind_ip": True}, headers=auth(ada))
    bound = r.json()["token"]
    assert (await api.http.get(f"/v/{video}/240p/seg-1.m4s?token={bound}")).status_code == 200
    for body in ({"cidr": "not a network"}, {"cidr": "10.0.0.1/8"}, {"ttl": 5}, {"x": 1}):
        assert (await api.http.post(grant, json=body, headers=auth(ada))).status_code == 400


async def test_view_beacons_are_deduplicated_and_batched(api: Api, app_state: Any) -> None:
    ada, bob = await api.user("ada@example.com"), await api.user("bob@example.com")
    video = await ready_video(api, ada)
    other = await ready_video(api, ada, title="other")
    url = f"/api/v1/videos/{video}/views"
    sessions = ["session-a-0001", "session-b-0002", "session-c-0003"]
    for session in sessions:
        for event, watched in (("start", 0), ("progress", 5), ("progress", 5), ("complete", 2)):
            r = await api.http.post(
                url, json={"session": session, "event": event, "watched": watched}
            )
            assert r.status_code == 202, r.text
    # The same session again (a reload, a replayed beacon): no new view, no new completion.
    for event in ("start", "complete"):
        await api.http.post(url, json={"session": sessions[0], "event": event, "watched": 1})
    await api.http.post(
        f"/api/v1/videos/{other}/views", json={"session": "s-other-01", "event": "start"}
    )
    # Nothing is written per beacon ...
    assert await api.rows("view_days") == []
    assert (await api.http.get(f"/api/v1/videos/{video}")).json()["views"] == 0
    # ... until the flush, which writes one row per video and day.
    assert await app_state.views.flush() == 2
    assert len(await api.rows("view_days")) == 2
    assert (await api.http.get(f"/api/v1/videos/{video}")).json()["views"] == 3

    r = await api.http.get(f"/api/v1/videos/{video}/stats", headers=auth(ada))
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["views"] == 3
    assert stats["completions"] == 3
    assert stats["completion_rate"] == 1.0
    assert stats["watch_seconds"] == 3 * 12 + 2
    assert len(stats["days"]) == 1
    assert (
        await api.http.get(f"/api/v1/videos/{video}/stats", headers=auth(bob))
    ).status_code == 403

    # More beacons the same day add to the same row.
    await api.http.post(url, json={"session": "session-d-0004", "event": "start"})
    assert await app_state.views.flush() == 1
    assert (await api.http.get(f"/api/v1/videos/{video}/stats", headers=auth(ada))).json()[
        "views"
    ] == 4

    trending = await api.http.get("/api/v1/trending")
    assert [v["id"] for v in trending.json()["items"]] == [video, other]


@pytest.mark.parametrize(
    "body",
    [
        {"session": "short", "event": "start"},
        {"session": "bad session!!", "event": "start"},
        {"session": "session-a-0001", "event": "pause"},
        {"session": "session-a-0001", "event": "start", "watched": -1},
        {"session": "session-a-0001", "event": "start", "watched": 1e9},
        {"session": "session-a-0001", "event": "start", "extra": 1},
    ],
)
async def test_bad_beacons_are_400(api: Api, app_state: Any, body: dict[str, object]) -> None:
    ada = await api.user("ada@example.com")
    video = await ready_video(api, ada)
    r = await api.http.post(f"/api/v1/videos/{video}/views", json=body)
    assert r.status_code == 400, r.text
    assert app_state.views.pending == {}


async def test_beacons_for_videos_that_do_not_play_are_refused(api: Api, app_state: Any) -> None:
    ada = await api.user("ada@example.com")
    uploading = await make(api, ada, privacy="public")
    beacon = {"session": "session-a-0001", "event": "start"}
    for video_id in (uploading["id"], "nope"):
        r = await api.http.post(f"/api/v1/videos/{video_id}/views", json=beacon)
        assert r.status_code == 404
    assert app_state.views.pending == {}


async def test_replicas_agree_on_a_session_through_redis(
    shared_redis: str, redis_prefix: str
) -> None:
    from backends.cache import open_cache
    from backends.catalog.views import SharedSeen
    from conf.settings import CacheSettings

    settings = CacheSettings(redis_url=shared_redis, redis_prefix=redis_prefix)
    replicas = [open_cache(settings) for _ in range(2)]
    try:
        seen = [SharedSeen(c.redis) for c in replicas if c.redis is not None]
        assert await seen[0].first("video\x00session\x00start")
        assert not await seen[1].first("video\x00session\x00start")
        assert await seen[1].first("video\x00other-session\x00start")
    finally:
        for cache in replicas:
            await cache.close()


async def test_related_videos(api: Api) -> None:
    ada = await api.user("ada@example.com")
    base = await ready_video(api, ada, title="Sailing the coast", tags=["sea", "boats", "travel"])
    two_tags = await ready_video(api, ada, title="Harbour life", tags=["sea", "boats"])
    one_tag = await ready_video(api, ada, title="City trip", tags=["travel"])
    by_text = await ready_video(api, ada, title="Sailing lessons", tags=["school"])
    await ready_video(api, ada, title="Cooking pasta", tags=["food"])
    await make(api, ada, title="Sailing, private", tags=["sea", "boats", "travel"])
    r = await api.http.get(f"/api/v1/videos/{base}/related")
    assert r.status_code == 200, r.text
    assert [v["id"] for v in r.json()["items"]] == [two_tags, one_tag, by_text]
    r = await api.http.get(f"/api/v1/videos/{base}/related", params={"limit": "1"})
    assert [v["id"] for v in r.json()["items"]] == [two_tags]
    assert (await api.http.get("/api/v1/videos/nope/related")).status_code == 404
