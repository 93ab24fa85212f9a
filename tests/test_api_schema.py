"""Schemathesis against the OpenAPI document of a running gateway (`clipsync serve`, with a
SQLite and with a PostgreSQL catalog): generated requests, valid and not, find no 500 and no
response that breaks the document."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from auth.tokens import AccessTokens
from backends.catalog import Catalog, NewVideo, VideoChanges, engines, upgrade
from tests.catalog_fixtures import scratch_database
from tests.conftest import settings_for
from tests.serving import Server, run_server, stop_server

SECRET = "schemathesis-secret-" + "x" * 20


class Gateway(msgspec.Struct):
    server: Server
    folder: Path  # schemathesis runs here: its cache stays out of the checkout
    token: str
    video_id: str


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("schemathesis")
    if request.param == "sqlite":
        yield from _gateway(folder, f"sqlite:///{folder}/catalog.sqlite3")
        return
    with scratch_database() as url:
        yield from _gateway(folder, url)


def _gateway(folder: Path, url: str) -> Iterator[Gateway]:
    async def seed() -> tuple[str, str]:
        engine = engines.create(url)
        await upgrade(engine)
        catalog = Catalog(engine)
        user = await catalog.create_user("fuzz@example.com")
        video = await catalog.create_video(user.id, NewVideo(title="fuzz", privacy="public"))
        await catalog.update_video(video.id, VideoChanges(status="ready"))
        await catalog.close()
        return user.id, video.id

    user_id, video_id = asyncio.run(seed())
    base = settings_for(folder / "library")
    (folder / "library").mkdir()
    config = msgspec.to_builtins(base)
    config["catalog"]["url"] = url
    config["auth"]["jwt_secret"] = SECRET
    server = run_server(msgspec.convert(config, type(base)), folder / "gateway.log")
    token = AccessTokens({"k1": SECRET.encode()}, "k1", 3600).issue(user_id, "user")
    yield Gateway(server, folder, token, video_id)
    stop_server(server)


def test_api_follows_its_document(gateway: Gateway) -> None:
    """Every operation, with valid and invalid data: no 5xx, statuses, content types, headers
    and bodies as documented, invalid data refused and valid data accepted."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{gateway.server.base}/api/v1/openapi.json",
        "--checks",
        "all",
        # Both judge semantics the document cannot state: a cursor or a search text can be
        # schema-valid and still refused (an opaque cursor we never issued, text without a
        # word), and a new video cannot take view beacons until its upload is processed.
        "--exclude-checks",
        "positive_data_acceptance,ensure_resource_availability",
        "--max-examples",
        "40",
        "--seed",
        "20261124",
        "--header",
        f"Authorization: Bearer {gateway.token}",
        "--no-color",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=gateway.folder)
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5_000:]
