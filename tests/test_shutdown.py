"""Graceful shutdown of `clipsync serve`: SIGTERM (what Kubernetes sends) lets a request in
flight finish, and an upload streaming at that moment keeps every byte it delivered: the
client resumes on the next process from there."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec

from conf import Settings
from tests.conftest import settings_for, signed_in
from tests.serving import Server, run_server, stop_server

SECRET = "g" * 40
MB = 1024 * 1024
TUS = {"tus-resumable": "1.0.0"}


def _settings(root: Path) -> Settings:
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"]["jwt_secret"] = SECRET
    return msgspec.convert(raw, Settings)


def _slow_patch(
    server: Server, path: str, token: str, data: bytes, halfway: threading.Event
) -> tuple[int, dict[str, str]]:
    """A PATCH sending half of ``data``, signalling, pausing, then the rest; its answer."""
    where = urlsplit(server.base)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {where.netloc}\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(head + data[: len(data) // 2])
        halfway.set()
        time.sleep(1.0)  # SIGTERM arrives now
        sock.sendall(data[len(data) // 2 :])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers = {}
    for line in rest.split(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def test_sigterm_lets_an_upload_in_flight_finish(tmp_path: Path) -> None:
    root = tmp_path / "library"
    root.mkdir()
    data = os.urandom(3 * MB)
    server = run_server(_settings(root), tmp_path / "first.log")
    try:
        token = signed_in(SECRET, f"shutdown-{tmp_path.name}")
        auth = {"authorization": f"Bearer {token}"}
        video = httpx.post(f"{server.base}/api/v1/videos", json={"title": "t"}, headers=auth)
        assert video.status_code == 201, video.text
        created = httpx.post(
            f"{server.base}/api/v1/uploads",
            headers={
                **auth,
                **TUS,
                "upload-length": str(4 * MB),
                "upload-metadata": "video_id "
                + base64.b64encode(video.json()["video"]["id"].encode()).decode(),
            },
        )
        assert created.status_code == 201, created.text
        path = urlsplit(created.headers["location"]).path

        halfway = threading.Event()
        result: dict[str, object] = {}

        def send() -> None:
            try:
                result["answer"] = _slow_patch(server, path, token, data, halfway)
            except OSError as exc:
                result["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        assert halfway.wait(10)
        time.sleep(0.2)
        server.process.send_signal(signal.SIGTERM)  # as Kubernetes does
        sender.join(30)
        assert server.process.wait(timeout=30) == 0
    finally:
        stop_server(server)

    assert "error" not in result, result
    status, headers = result["answer"]  # type: ignore[misc]
    assert status == 204, (status, headers)
    assert headers["upload-offset"] == str(3 * MB)

    # The next process (a new pod) knows the offset: the client resumes from there.
    server = run_server(_settings(root), tmp_path / "second.log")
    try:
        head = httpx.head(f"{server.base}{path}", headers={**auth, **TUS})
        assert head.status_code == 200, head.text
        assert head.headers["upload-offset"] == str(3 * MB)
    finally:
        stop_server(server)
