"""Resumable uploads in the catalog, on SQLite and PostgreSQL: one upload per video, one writer at
a time at the right offset, claims that lapse, expiry."""

from __future__ import annotations

import asyncio

import pytest

from backends.catalog import Catalog, NewVideo
from backends.catalog import uploads as store
from backends.errors import Conflict

pytestmark = pytest.mark.anyio


async def _upload(catalog: Catalog, length: int = 100, ttl: float = 3600) -> store.Upload:
    owner = await catalog.create_user("up@example.com")
    video = await catalog.create_video(owner.id, NewVideo(title="upload me"))
    return await store.create(catalog, video.id, owner.id, length, "a.mp4", ttl)


async def test_one_upload_per_video(catalog: Catalog) -> None:
    upload = await _upload(catalog)
    assert await store.get(catalog, upload.id) == upload
    with pytest.raises(Conflict):
        await store.create(catalog, upload.video_id, upload.user_id, 5, "b.mp4", 60)
    for unknown in ("nope", "a\x00b", "x" * 100):
        assert await store.get(catalog, unknown) is None


async def test_one_writer_at_the_right_offset(catalog: Catalog) -> None:
    upload = await _upload(catalog)
    claims = await asyncio.gather(*(store.claim(catalog, upload.id, 0, 30) for _ in range(5)))
    assert sorted(claims) == [False] * 4 + [True]
    await store.advance(catalog, upload.id, 0, 40)
    after = await store.get(catalog, upload.id)
    assert after is not None
    assert (after.offset, after.parts) == (40, 1)
    assert not await store.claim(catalog, upload.id, 0, 30)  # a stale offset
    assert await store.claim(catalog, upload.id, 40, 30)
    await store.advance(catalog, upload.id, 40, 0)  # an empty PATCH: released, nothing moved
    assert await store.claim(catalog, upload.id, 40, 30)
    await store.advance(catalog, upload.id, 40, 60)
    done = await store.get(catalog, upload.id)
    assert done is not None
    assert done.complete
    await store.finish(catalog, upload.id)
    assert not await store.claim(catalog, upload.id, 100, 30)  # finished: nothing to append


async def test_a_dead_writers_claim_lapses(catalog: Catalog) -> None:
    upload = await _upload(catalog)
    assert await store.claim(catalog, upload.id, 0, 0.2)
    assert not await store.claim(catalog, upload.id, 0, 0.2)
    await asyncio.sleep(0.3)
    assert await store.claim(catalog, upload.id, 0, 0.2)


async def test_expired_uploads_are_listed_then_removed(catalog: Catalog) -> None:
    upload = await _upload(catalog, ttl=0)
    assert [u.id for u in await store.expired(catalog)] == [upload.id]
    await store.remove(catalog, upload.id)
    assert await store.get(catalog, upload.id) is None
    assert await store.expired(catalog) == []
