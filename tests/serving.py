"""Running the real server for tests and benchmarks: ``clipsync serve`` (granian) on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import msgspec

from conf import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings) -> dict[str, str]:
    """The CLIPSYNC_<SECTION>__<KEY> variables that reproduce ``settings``."""
    env = {}
    for section, values in msgspec.to_builtins(settings).items():
        for key, value in values.items():
            if isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, dict | list | tuple):
                text = msgspec.json.encode(value).decode()
            else:
                text = str(value)
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


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_server(server: Server) -> None:
    stop_process(server.process)
    server.handle.close()
