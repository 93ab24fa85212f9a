"""Shared fixtures: generated media (once per run), the app in-process, a real granian server."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.catalog import Catalog
from backends.storage import Storage
from conf import Settings
from conf.settings import StorageSettings
from gateway.app import create_app
from tests.media import MediaLibrary
from tests.serving import Server, run_server, stop_server

# Gateways started by tests keep their catalog here, never in the working directory.
TEST_CATALOG = f"sqlite:///{tempfile.gettempdir()}/clipsync-tests-{os.getpid()}/catalog.sqlite3"

pytest_plugins = [
    "tests.stores",
    "tests.backends",
    "tests.redis_fixtures",
    "tests.catalog_fixtures",
]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(tool: str, how: str) -> str:
    """Path of ``tool``; in CI a missing tool fails the test, elsewhere it skips with a hint."""
    found = shutil.which(tool)
    if found:
        return found
    message = f"{tool} is not installed: {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> MediaLibrary:
    return MediaLibrary(tmp_path_factory.mktemp("library"))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def settings_with(
    storage: StorageSettings,
    cache: dict[str, object] | None = None,
    server: dict[str, object] | None = None,
    **vod: object,
) -> Settings:
    """Settings over ``storage`` with these cache, server and vod values; the catalog is the
    run's own test catalog."""
    import msgspec

    raw = msgspec.to_builtins(Settings(storage=storage))
    raw["vod"].update(vod)
    raw["cache"].update(cache or {})
    raw["server"].update(server or {})
    raw["catalog"]["url"] = TEST_CATALOG
    return msgspec.convert(raw, Settings)


def settings_for(
    root: Path | str,
    cache: dict[str, object] | None = None,
    server: dict[str, object] | None = None,
    **vod: object,
) -> Settings:
    return settings_with(StorageSettings(library=str(root)), cache, server, **vod)


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
    catalog: Catalog | None = None,
    storage: Storage | None = None,
    base_url: str = "http://test",
    client_timeout: float = 5.0,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app in-process with ``settings`` (and this catalog or storage, if given), and an
    httpx client talking to it. No lifespan runs in-process: the app's own shutdown runs at the
    end (tasks still running, cache, limiter, catalog and storage connections)."""
    app = create_app(settings, storage, catalog)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url=base_url, timeout=client_timeout
    ) as http:
        try:
            yield http, app
        finally:
            await app.state.shutdown()


@contextlib.asynccontextmanager
async def app_client(
    root: Path,
    cache: dict[str, object] | None = None,
    server: dict[str, object] | None = None,
    **vod: object,
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app in-process over ``root`` with these settings, and an httpx client talking to it."""
    async with serving(settings_for(root, cache, server, **vod)) as (http, app):
        yield http, app


@pytest.fixture
async def client(media: MediaLibrary) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(media.root) as (http, _):
        yield http


@pytest.fixture(scope="session")
def server(media: MediaLibrary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "granian.log"
    running = run_server(settings_for(media.root), log)
    yield running
    stop_server(running)


@pytest.fixture(scope="session", autouse=True)
def _test_catalog_folder() -> Iterator[None]:
    """The shared test catalog goes with the run."""
    yield
    shutil.rmtree(Path(TEST_CATALOG.removeprefix("sqlite:///")).parent, ignore_errors=True)


def signed_in(secret: str, name: str) -> str:
    """A new user ``name``@example.com in the run's test catalog, and an access token of it
    signed as a gateway with ``auth.jwt_secret = secret`` (key id k1) would sign it."""
    import asyncio

    from auth.tokens import AccessTokens
    from backends.catalog import engines

    async def seed() -> str:
        catalog = Catalog(engines.create(TEST_CATALOG))
        try:
            return (await catalog.create_user(f"{name}@example.com")).id
        finally:
            await catalog.close()

    return AccessTokens({"k1": secret.encode()}, "k1", 900).issue(asyncio.run(seed()), "user")
