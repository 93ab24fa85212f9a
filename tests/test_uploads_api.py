"""The tus server over HTTP, on SQLite and PostgreSQL: create, resume by HEAD, PATCH in chunks,
checksums, limits, termination, one writer at a time, and the original joined with its MD5."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from auth.tokens import AccessTokens
from backends.catalog import Catalog
from conf import Settings
from tests.conftest import serving, settings_for
from tests.media import MediaLibrary

pytestmark = pytest.mark.anyio

SECRET = "u" * 40
TUS = {"tus-resumable": "1.0.0"}
CHUNK = {**TUS, "content-type": "application/offset+octet-stream"}
WRONG_SHA1 = "sha1 " + base64.b64encode(b"x" * 20).decode()


class Client:
    def __init__(self, http: httpx.AsyncClient, catalog: Catalog, root: Path, state: Any) -> None:
        self.http = http
        self.catalog = catalog
        self.root = root
        self.state = state

    async def user(self, email: str) -> dict[str, str]:
        user = await self.catalog.create_user(email)
        token = AccessTokens({"k1": SECRET.encode()}, "k1", 900).issue(user.id, "user")
        return {"authorization": f"Bearer {token}"}

    async def video(self, who: dict[str, str], privacy: str = "private") -> str:
        body = {"title": "upload", "privacy": privacy}
        r = await self.http.post("/api/v1/videos", json=body, headers=who)
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["upload"]["url"] == "/api/v1/uploads"
        return str(created["video"]["id"])

    async def start(self, who: dict[str, str], video: str, length: int, **extra: str) -> str:
        meta = f"video_id {b64(video)},filename {b64('clip one.mp4')}"
        headers = {**TUS, **who, "upload-length": str(length), "upload-metadata": meta, **extra}
        r = await self.http.post("/api/v1/uploads", headers=headers)
        assert r.status_code == 201, r.text
        return r.headers["location"]


def parts_left(client: Client) -> bool:
    """Any part file left in the library (an emptied upload folder may stay)."""
    return any(p.is_file() for p in (client.root / "uploads").rglob("*"))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
async def client(catalog: Catalog, tmp_path: Path) -> AsyncIterator[Client]:
    raw = msgspec.to_builtins(settings_for(tmp_path / "library"))
    (tmp_path / "library").mkdir()
    raw["auth"]["jwt_secret"] = SECRET
    raw["ingest"]["max_upload_mb"] = 8
    async with serving(msgspec.convert(raw, Settings), catalog) as (http, app):
        yield Client(http, catalog, tmp_path / "library", app.state)


async def test_upload_in_chunks_then_the_original_with_its_md5(client: Client) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada)
    data = os.urandom(3 * 1024 * 1024 + 12345)
    url = await client.start(ada, video, len(data))
    options = await client.http.options("/api/v1/uploads")
    assert options.status_code == 204
    assert "checksum" in options.headers["tus-extension"]
    assert options.headers["tus-max-size"] == str(8 * 1024 * 1024)
    offset = 0
    for start in range(0, len(data), 1024 * 1024):
        head = await client.http.head(url, headers={**TUS, **ada})
        assert head.status_code == 200
        assert int(head.headers["upload-offset"]) == offset
        assert head.headers["cache-control"] == "no-store"
        chunk = data[start : start + 1024 * 1024]
        digest = base64.b64encode(
            hashlib.new("sha1", chunk, usedforsecurity=False).digest()
        ).decode()
        r = await client.http.patch(
            url,
            content=chunk,
            headers={
                **CHUNK,
                **ada,
                "upload-offset": str(offset),
                "upload-checksum": f"sha1 {digest}",
            },
        )
        assert r.status_code == 204, r.text
        offset = int(r.headers["upload-offset"])
        assert "upload-expires" in r.headers
    assert offset == len(data)
    got = await client.catalog.get_video(video)
    assert got is not None
    assert got.status == "uploaded"
    assert got.original_md5 == hashlib.new("md5", data, usedforsecurity=False).hexdigest()
    assert got.original_size == len(data)
    original = client.root / str(got.original_path)
    assert original.name == "clip one.mp4"
    assert original.read_bytes() == data
    assert not parts_left(client)  # the parts are gone
    # Finished: no more bytes, and the video takes no second upload.
    r = await client.http.patch(
        url, content=b"x", headers={**CHUNK, **ada, "upload-offset": str(offset)}
    )
    assert r.status_code == 409
    r = await client.http.post(
        "/api/v1/uploads",
        headers={**TUS, **ada, "upload-length": "1", "upload-metadata": f"video_id {b64(video)}"},
    )
    assert r.status_code == 409


async def test_creation_with_upload(client: Client) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada)
    url = await client.start(ada, video, 10)
    assert url.startswith("/api/v1/uploads/")
    other = await client.video(ada)
    meta = f"video_id {b64(other)},filename {b64('b.mov')}"
    r = await client.http.post(
        "/api/v1/uploads",
        content=b"0123456789",
        headers={**CHUNK, **ada, "upload-length": "10", "upload-metadata": meta},
    )
    assert r.status_code == 201
    assert r.headers["upload-offset"] == "10"
    got = await client.catalog.get_video(other)
    assert got is not None
    assert got.status == "uploaded"


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"upload-offset": "3"}, b"abc", 409),
        ({"upload-offset": "-1"}, b"abc", 400),
        ({"tus-resumable": "0.2.2", "upload-offset": "0"}, b"abc", 412),
        ({"content-type": "application/octet-stream", "upload-offset": "0"}, b"abc", 415),
        ({"upload-offset": "0", "upload-checksum": WRONG_SHA1}, b"abc", 460),
        ({"upload-offset": "0", "upload-checksum": "crc32 AAAA"}, b"abc", 400),
        ({"upload-offset": "0"}, b"x" * 101, 413),
    ],
)  # fmt: skip
async def test_bad_patches_change_nothing(
    client: Client, headers: dict[str, str], body: bytes, status: int
) -> None:
    ada = await client.user("ada@example.com")
    url = await client.start(ada, await client.video(ada), 100)
    r = await client.http.patch(url, content=body, headers={**CHUNK, **ada, **headers})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    if status == 412:
        assert r.headers["tus-version"] == "1.0.0"
    head = await client.http.head(url, headers={**TUS, **ada})
    assert head.headers["upload-offset"] == "0"
    # And the upload still works.
    r = await client.http.patch(url, content=b"ok", headers={**CHUNK, **ada, "upload-offset": "0"})
    assert r.status_code == 204
    assert r.headers["upload-offset"] == "2"


async def test_bad_creations(client: Client) -> None:
    ada, bob = await client.user("ada@example.com"), await client.user("bob@example.com")
    video = await client.video(ada)
    meta = f"video_id {b64(video)}"
    cases: list[tuple[dict[str, str], int]] = [
        ({**TUS, "upload-length": "10", "upload-metadata": meta}, 401),
        ({**TUS, **ada, "upload-length": str(9 * 1024 * 1024), "upload-metadata": meta}, 413),
        ({**TUS, **ada, "upload-length": "ten", "upload-metadata": meta}, 400),
        ({**TUS, **ada, "upload-metadata": meta}, 400),
        ({**TUS, **ada, "upload-length": "10"}, 404),
        ({**TUS, **bob, "upload-length": "10", "upload-metadata": meta}, 404),
        ({**ada, "upload-length": "10", "upload-metadata": meta}, 400),
        ({**TUS, **ada, "upload-length": "10", "upload-metadata": "video_id !!"}, 400),
    ]
    for headers, status in cases:
        r = await client.http.post("/api/v1/uploads", headers=headers)
        assert r.status_code == status, (headers, r.text)


async def test_others_and_termination(client: Client) -> None:
    ada, bob = await client.user("ada@example.com"), await client.user("bob@example.com")
    url = await client.start(ada, await client.video(ada), 100)
    await client.http.patch(url, content=b"abc", headers={**CHUNK, **ada, "upload-offset": "0"})
    assert (await client.http.head(url, headers={**TUS, **bob})).status_code == 403
    assert (
        await client.http.head("/api/v1/uploads/nope", headers={**TUS, **ada})
    ).status_code == 404
    assert (await client.http.delete(url, headers={**TUS, **bob})).status_code == 403
    assert (await client.http.delete(url, headers={**TUS, **ada})).status_code == 204
    assert (await client.http.head(url, headers={**TUS, **ada})).status_code == 404
    assert not parts_left(client)


async def test_two_concurrent_patches_one_wins(client: Client) -> None:
    ada = await client.user("ada@example.com")
    url = await client.start(ada, await client.video(ada), 1000)

    async def slow(tag: bytes) -> AsyncIterator[bytes]:
        for _ in range(10):
            await asyncio.sleep(0.02)
            yield tag * 10

    first = {**CHUNK, **ada, "upload-offset": "0"}
    results: list[Any] = await asyncio.gather(
        *(client.http.patch(url, content=slow(tag), headers=first) for tag in (b"a", b"b"))
    )
    assert sorted(r.status_code for r in results) == [204, 409]
    winner = next(r for r in results if r.status_code == 204)
    assert winner.headers["upload-offset"] == "100"
    head = await client.http.head(url, headers={**TUS, **ada})
    assert head.headers["upload-offset"] == "100"


async def test_expired_uploads_are_cleaned_away(client: Client) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada)
    uploads = client.state.uploads
    uploads.ttl = 0.5
    url = await client.start(ada, video, 100)
    r = await client.http.patch(url, content=b"abc", headers={**CHUNK, **ada, "upload-offset": "0"})
    assert r.status_code == 204
    assert parts_left(client)
    await asyncio.sleep(0.6)
    assert (await client.http.head(url, headers={**TUS, **ada})).status_code == 404
    assert await uploads.clean_expired() == 1
    assert not parts_left(client)
    assert await uploads.clean_expired() == 0
    # The video takes a new upload.
    await client.start(ada, video, 100)


async def _upload_file(client: Client, who: dict[str, str], video: str, data: bytes) -> None:
    url = await client.start(who, video, len(data))
    r = await client.http.patch(url, content=data, headers={**CHUNK, **who, "upload-offset": "0"})
    assert r.status_code == 204, r.text
    await client.state.ingest.settle()


async def test_an_h264_upload_plays_at_once(client: Client, media: MediaLibrary) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada, privacy="unlisted")
    await _upload_file(client, ada, video, media.good("h264_30fps_bframes").read_bytes())
    got = await client.catalog.get_video(video)
    assert got is not None
    assert got.status == "playable"
    assert (got.width, got.height) == (320, 180)
    assert got.duration_ms == pytest.approx(14_000, abs=200)
    assert [r.name for r in got.renditions] == ["original"]
    master = await client.http.get(f"/v/{video}/master.m3u8")
    assert master.status_code == 200
    assert "original/index.m3u8" in master.text
    assert (await client.http.get(f"/v/{video}/original/seg-1.m4s")).status_code == 200


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("noise", "failed", "not a readable video"),
        ("audio_only", "failed", "no video stream"),
        ("hevc", "processing", None),
    ],
)
async def test_uploads_are_judged_by_content(
    client: Client, media: MediaLibrary, kind: str, status: str, reason: str | None
) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada)
    data = bytes(range(256)) * 400 if kind == "noise" else media.good(kind).read_bytes()
    await _upload_file(client, ada, video, data)
    got = await client.catalog.get_video(video)
    assert got is not None
    assert got.status == status
    assert got.failure_reason == reason if reason is None else reason in str(got.failure_reason)
    assert got.original_md5 is not None  # the original is kept either way
    r = await client.http.get(f"/api/v1/videos/{video}", headers=ada)
    assert r.json()["status"] == status


async def test_the_quota_counts_originals_and_unfinished_uploads(client: Client) -> None:
    ada = await client.user("ada@example.com")
    client.state.uploads.quota = 150
    first = await client.start(ada, await client.video(ada), 100)
    second = await client.video(ada)
    meta = f"video_id {b64(second)}"
    headers = {**TUS, **ada, "upload-length": "100", "upload-metadata": meta}
    r = await client.http.post("/api/v1/uploads", headers=headers)
    assert r.status_code == 403
    assert "quota" in r.json()["detail"]
    # Finished originals count too: finish the first, and the second still does not fit.
    r = await client.http.patch(
        first, content=b"x" * 100, headers={**CHUNK, **ada, "upload-offset": "0"}
    )
    assert r.status_code == 204
    assert (await client.http.post("/api/v1/uploads", headers=headers)).status_code == 403
    bob = await client.user("bob@example.com")  # another user has a quota of their own
    await client.start(bob, await client.video(bob), 100)


async def test_a_single_request_form_upload(client: Client, media: MediaLibrary) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada, privacy="unlisted")
    data = media.good("h264_30fps_bframes").read_bytes()
    files = {"file": ("../../etc/My Clip.mp4", data, "video/mp4")}
    url = f"/api/v1/videos/{video}/original"
    r = await client.http.post(url, files=files, data={"note": "x"}, headers=ada)
    assert r.status_code == 201, r.text
    assert r.json()["md5"] == hashlib.new("md5", data, usedforsecurity=False).hexdigest()
    await client.state.ingest.settle()
    got = await client.catalog.get_video(video)
    assert got is not None
    assert got.status == "playable"
    assert got.original_path == f"videos/{video}/original/My Clip.mp4"
    assert (await client.http.post(url, files=files, headers=ada)).status_code == 409


FORM = "multipart/form-data; boundary=b"
FILE_PART = b"--b\r\nContent-Disposition: form-data; name=file; filename=a.mp4\r\n\r\n"
OTHER_PART = b"--b\r\nContent-Disposition: form-data; name=other\r\n\r\nx\r\n--b--\r\n"


@pytest.mark.parametrize(
    ("content", "ctype", "status"),
    [
        (b"not a form", "video/mp4", 400),
        (OTHER_PART, FORM, 400),
        (FILE_PART + b"xyz", FORM, 400),  # the body ends inside the file
        (FILE_PART + b"x" * (9 * 1024 * 1024) + b"\r\n--b--\r\n", FORM, 413),
    ],
)
async def test_bad_form_uploads_leave_nothing(
    client: Client, content: bytes, ctype: str, status: int
) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada)
    url = f"/api/v1/videos/{video}/original"
    r = await client.http.post(url, content=content, headers={**ada, "content-type": ctype})
    assert r.status_code == status, r.text
    got = await client.catalog.get_video(video)
    assert got is not None
    assert (got.status, got.original_path) == ("uploading", None)
    videos = client.root / "videos"
    files = [p for p in videos.rglob("*") if p.is_file()] if videos.exists() else []
    assert files == []  # not even a temporary file


async def test_an_upload_in_one_patch_is_moved_into_place_with_its_md5(client: Client) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada)
    data = os.urandom(2 * 1024 * 1024 + 7)
    await _upload_file(client, ada, video, data)
    got = await client.catalog.get_video(video)
    assert got is not None
    # The MD5 was computed as the bytes arrived, and the one part renamed, not copied.
    assert got.original_md5 == hashlib.new("md5", data, usedforsecurity=False).hexdigest()
    assert (client.root / str(got.original_path)).read_bytes() == data
    assert not parts_left(client)
    assert client.state.uploads._md5 == {}  # nothing kept for a finished upload


async def test_patches_append_to_one_part_in_a_local_folder(client: Client) -> None:
    ada = await client.user("ada@example.com")
    video = await client.video(ada)
    data = os.urandom(3 * 1024 * 1024 + 5)
    url = await client.start(ada, video, len(data))
    folder = client.root / "uploads" / url.rsplit("/", 1)[1]
    cuts = [0, 1024 * 1024, 2 * 1024 * 1024, len(data)]
    for number, (start, end) in enumerate(itertools.pairwise(cuts)):
        if number == 1:
            # Bytes past the offset that no PATCH accounted for (a crash between the write and
            # the catalog's update) are cut, not kept.
            with (folder / f"{0:020d}").open("ab") as part:
                part.write(b"stale tail")
        if number == 2:
            client.state.uploads._md5.clear()  # as after a restart: the MD5 is read at the end
        headers = {**CHUNK, **ada, "upload-offset": str(start)}
        r = await client.http.patch(url, content=data[start:end], headers=headers)
        assert r.status_code == 204, r.text
        if end < len(data):
            # One growing part, no join to come.
            assert [p.name for p in folder.iterdir()] == [f"{0:020d}"]
            assert (folder / f"{0:020d}").read_bytes()[:end] == data[:end]
    got = await client.catalog.get_video(video)
    assert got is not None
    assert got.status == "uploaded"
    assert got.original_md5 == hashlib.new("md5", data, usedforsecurity=False).hexdigest()
    assert (client.root / str(got.original_path)).read_bytes() == data
    assert not parts_left(client)
