"""Shared fixtures: generated media (once per run), the app in-process, a real granian server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from conf import Settings
from conf.settings import StorageSettings
from gateway.app import create_app
from tests.media import MediaLibrary

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


def settings_for(root: Path, **vod: object) -> Settings:
    import msgspec

    base = Settings(storage=StorageSettings(library=str(root)))
    raw = msgspec.to_builtins(base)
    raw["vod"].update(vod)
    return msgspec.convert(raw, Settings)


@pytest.fixture
async def client(media: MediaLibrary) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(media.root))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The CLIPSYNC_<SECTION>__<KEY> variables that reproduce ``settings``."""
    import msgspec

    env = {}
    for section, values in msgspec.to_builtins(settings).items():
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            env[f"CLIPSYNC_{section.upper()}__{key.upper()}"] = text
    return env


class Server:
    def __init__(
        self, process: subprocess.Popen[bytes], base: str, log: Path, handle: IO[bytes]
    ) -> None:
        self.process = process
        self.base = base
        self.log = log
        self.handle = handle


def run_server(settings: Settings, log: Path, timeout: float = 30.0) -> Server:
    """Start ``clipsync serve`` (granian) on a free port and wait until it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSYNC_")}
    env.update(settings_env(settings))
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--library",
        settings.storage.library,
        "--port",
        str(port),
    ]
    handle = log.open("wb")
    process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log, handle)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_server(server)
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.base}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    server.handle.close()


@pytest.fixture(scope="session")
def server(media: MediaLibrary, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "granian.log"
    running = run_server(settings_for(media.root), log)
    yield running
    stop_server(running)
