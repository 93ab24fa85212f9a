"""A real tus client (tuspy) against `clipsync serve`: 1 MB chunks with checksums, a PATCH cut
off mid-body, a gateway restart in the middle, and the stored original's MD5 equal to the
source's."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import msgspec
from tusclient import client as tus_client

from backends.catalog import Catalog, engines
from conf import Settings
from tests.conftest import TEST_CATALOG, settings_for, signed_in
from tests.serving import Server, run_server, stop_server

SECRET = "t" * 40
MB = 1024 * 1024


def _settings(root: Path) -> Settings:
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"]["jwt_secret"] = SECRET
    return msgspec.convert(raw, Settings)


def _cut_off_patch(server: Server, path: str, token: str, offset: int, data: bytes) -> None:
    """A PATCH that announces all of ``data`` but sends only part of it, then hangs up."""
    host = urlsplit(server.base)
    sent = data[: len(data) // 3]
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {host.netloc}\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: {offset}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host.hostname, host.port)) as sock:
        sock.sendall(head + sent)
        sock.shutdown(socket.SHUT_RDWR)


def _offset(server: Server, path: str, token: str) -> int:
    r = httpx.head(
        server.base + path,
        headers={"tus-resumable": "1.0.0", "authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    return int(r.headers["upload-offset"])


def test_tuspy_uploads_resumes_and_the_original_matches(tmp_path: Path) -> None:
    root = tmp_path / "library"
    root.mkdir()
    source = tmp_path / "source.mp4"
    # Random bytes (every chunk different, so a misplaced chunk changes the MD5), seeded so a
    # failure can be replayed.
    source.write_bytes(random.Random(5).randbytes(5 * MB + 4321))
    expected = hashlib.new("md5", source.read_bytes(), usedforsecurity=False).hexdigest()

    server = run_server(_settings(root), tmp_path / "first.log")  # prepares the catalog
    try:
        token = signed_in(SECRET, f"tus-{tmp_path.name}")
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{server.base}/api/v1/videos", json={"title": "tus"}, headers=auth)
        assert r.status_code == 201, r.text
        video_id = r.json()["video"]["id"]
        client = tus_client.TusClient(f"{server.base}/api/v1/uploads", headers=auth)
        # A stream of our own: tuspy leaves files it opens from a path unclosed.
        with source.open("rb") as stream:
            uploader = client.uploader(
                file_stream=stream,
                chunk_size=MB,
                metadata={"video_id": video_id, "filename": "source.mp4"},
                upload_checksum=True,
            )
            uploader.upload_chunk()
            uploader.upload_chunk()
        path = urlsplit(uploader.url).path
        assert _offset(server, path, token) == 2 * MB
        # A chunk cut off mid-way: what arrived is kept, and the client resumes from there.
        chunk = source.read_bytes()[2 * MB : 3 * MB]
        _cut_off_patch(server, path, token, 2 * MB, chunk)
        for _ in range(50):
            kept = _offset(server, path, token)
            if kept > 2 * MB:
                break
            asyncio.run(asyncio.sleep(0.1))
        assert 2 * MB < kept <= 2 * MB + len(chunk) // 3
    finally:
        stop_server(server)

    # Another gateway process (a restart, or another replica) takes the upload over.
    server = run_server(_settings(root), tmp_path / "second.log")
    try:
        client = tus_client.TusClient(f"{server.base}/api/v1/uploads", headers=auth)
        with source.open("rb") as stream:
            resumed = client.uploader(file_stream=stream, url=server.base + path, chunk_size=MB)
            assert resumed.offset == kept
            resumed.upload()
        # The bytes are random, not a video: validation fails it, with the reason, and keeps
        # the original. Noise may also probe as a raw stream (H.263, say), refused by name.
        for _ in range(100):
            got = httpx.get(f"{server.base}/api/v1/videos/{video_id}", headers=auth).json()
            if got["status"] != "uploaded":
                break
            time.sleep(0.1)
        assert got["status"] == "failed"
        assert re.search("not a readable video|files are not accepted", got["failure_reason"])
    finally:
        stop_server(server)

    async def stored() -> tuple[str | None, str | None]:
        catalog = Catalog(engines.create(TEST_CATALOG))
        try:
            video = await catalog.get_video(video_id)
            assert video is not None
            return video.original_md5, video.original_path
        finally:
            await catalog.close()

    md5, original = asyncio.run(stored())
    assert md5 == expected
    assert (root / str(original)).read_bytes() == source.read_bytes()
