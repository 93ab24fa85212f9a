"""Real Redis for the cache tests: the shared server (127.0.0.1:6379, one key prefix per test)
and private ``redis-server`` processes that outage tests stop, pause and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

from tests.serving import free_port, stop_process

SHARED_URL = "redis://127.0.0.1:6379/0"
HOW = "start Redis on 127.0.0.1:6379 (apt-get install redis-server) or run scripts/test"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the Redis tests")
    pytest.skip(f"{reason}: {HOW}")


class RedisServer:
    """A private redis-server on a free port (no persistence), to stop, pause and restart."""

    def __init__(self, folder: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = folder
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable("redis-server is not installed")
        assert binary is not None
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self.folder)]
        command += ["--enable-debug-command", "local", *self.args]
        self.log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            stop_process(self.process)
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_redis() -> str:
    try:
        redis.Redis.from_url(SHARED_URL, socket_timeout=2).ping()
    except redis.RedisError:
        _unavailable(f"no Redis at {SHARED_URL}")
    return SHARED_URL


@pytest.fixture
def redis_prefix(shared_redis: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"clipsync-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(shared_redis)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def keys_under(url: str, prefix: str) -> list[bytes]:
    return list(redis.Redis.from_url(url).scan_iter(match=f"{prefix}*", count=1000))
