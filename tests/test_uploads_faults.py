"""An upload to S3 (moto) while the store goes away: the PATCH fails with 503 and loses nothing;
once the store is back the client resumes from the offset it is told and the original is whole."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from auth.tokens import AccessTokens
from backends.catalog import Catalog
from conf import Settings
from tests.backends import CONTAINER, PREFIX, s3_settings
from tests.conftest import serving, settings_with
from tests.stores import MotoS3

pytestmark = pytest.mark.anyio

SECRET = "f" * 40
TUS = {"tus-resumable": "1.0.0"}
CHUNK = {**TUS, "content-type": "application/offset+octet-stream"}


@pytest.fixture
async def s3_gateway(
    catalog: Catalog, moto_s3: MotoS3
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    s3 = moto_s3.client()
    if CONTAINER not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=CONTAINER)
    s3.close()
    # Short deadlines: a store that is down fails the request in a second, not ten.
    storage = s3_settings(moto_s3, deadline=2.0, attempt_timeout=0.5, retries=1)
    raw = msgspec.to_builtins(settings_with(storage))
    raw["auth"]["jwt_secret"] = SECRET
    async with serving(msgspec.convert(raw, Settings), catalog) as (http, app):
        yield http, app.state


@pytest.mark.parametrize("empty_catalog", ["sqlite"], indirect=True)  # the fault is the store's
async def test_storage_down_during_an_upload_loses_nothing(
    s3_gateway: tuple[httpx.AsyncClient, Any], catalog: Catalog, moto_s3: MotoS3
) -> None:
    http, state = s3_gateway
    user = await catalog.create_user("s3@example.com")
    token = AccessTokens({"k1": SECRET.encode()}, "k1", 900).issue(user.id, "user")
    who = {"authorization": f"Bearer {token}"}
    video = (await http.post("/api/v1/videos", json={"title": "s3"}, headers=who)).json()["video"]
    data = os.urandom(3 * 256 * 1024)
    meta = "video_id " + base64.b64encode(video["id"].encode()).decode()
    created = await http.post(
        "/api/v1/uploads",
        headers={**TUS, **who, "upload-length": str(len(data)), "upload-metadata": meta},
    )
    url = created.headers["location"]
    third = len(data) // 3
    r = await http.patch(url, content=data[:third], headers={**CHUNK, **who, "upload-offset": "0"})
    assert r.status_code == 204

    moto_s3.stop()
    try:
        r = await http.patch(
            url,
            content=data[third : 2 * third],
            headers={**CHUNK, **who, "upload-offset": str(third)},
        )
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        head = await http.head(url, headers={**TUS, **who})
        assert head.headers["upload-offset"] == str(third)  # the catalog kept the offset
    finally:
        moto_s3.start()

    offset = int((await http.head(url, headers={**TUS, **who})).headers["upload-offset"])
    r = await http.patch(
        url, content=data[offset:], headers={**CHUNK, **who, "upload-offset": str(offset)}
    )
    assert r.status_code == 204, r.text
    await state.ingest.settle()
    got = await catalog.get_video(video["id"])
    assert got is not None
    assert got.original_md5 == hashlib.new("md5", data, usedforsecurity=False).hexdigest()
    s3 = moto_s3.client()
    stored = s3.get_object(Bucket=CONTAINER, Key=f"{PREFIX}/{got.original_path}")["Body"].read()
    parts = s3.list_objects_v2(Bucket=CONTAINER, Prefix=f"{PREFIX}/uploads/").get("KeyCount")
    s3.close()
    assert stored == data
    assert parts == 0  # the parts were deleted from the store too
