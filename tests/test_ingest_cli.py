"""`clipsync ingest FILE` against `clipsync serve`, as a creator runs it: sign in, upload with a
progress bar, follow processing to ready; an interrupted run resumes where it stopped; a file
that is not a video ends with its reason; bad credentials and missing files say what is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from conf import Settings
from packager.synth import SynthSpec, write
from tests.conftest import settings_for
from tests.serving import Server, run_server, stop_server

PASSWORD = "ingest from the command line 42"
LADDER = ["240p:240:300", "144p:144:150"]


class Gateway:
    def __init__(self, server: Server, root: Path) -> None:
        self.server = server
        self.root = root

    def account(self) -> tuple[str, dict[str, str]]:
        """A new account: its email and a bearer header."""
        email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
        body = {"email": email, "password": PASSWORD}
        r = httpx.post(f"{self.server.base}/api/v1/auth/register", json=body)
        assert r.status_code == 201, r.text
        r = httpx.post(f"{self.server.base}/api/v1/auth/login", json=body)
        assert r.status_code == 200, r.text
        return email, {"authorization": f"Bearer {r.json()['access_token']}"}

    def mine(self, auth: dict[str, str]) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.server.base}/api/v1/me/videos", headers=auth)
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    def original(self, video: str) -> bytes:
        (found,) = (self.root / "videos" / video / "original").iterdir()
        return found.read_bytes()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("ingest-cli")
    root = folder / "library"
    root.mkdir()
    raw = msgspec.to_builtins(settings_for(root))
    raw["auth"]["jwt_secret"] = "i" * 40
    raw["ingest"].update(ladder=LADDER, x264_preset="superfast")
    raw["jobs"].update(queue="memory", gateway_workers=1)
    server = run_server(msgspec.convert(raw, Settings), folder / "gateway.log")
    try:
        yield Gateway(server, root)
    finally:
        stop_server(server)


def ingest(
    gateway: Gateway, *args: str, state: Path, password: str = PASSWORD
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSYNC_")}
    env["CLIPSYNC_PASSWORD"] = password
    command = [sys.executable, "-m", "gateway.cli", "ingest", "--to", gateway.server.base]
    command += ["--state", str(state), *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=180)
    return process.returncode, out, err


def test_ingest_uploads_follows_and_ends_ready(gateway: Gateway, tmp_path: Path) -> None:
    source = write(tmp_path / "beach day.mp4", SynthSpec(duration=4, width=320, height=240))
    email, auth = gateway.account()
    state = tmp_path / "state.json"
    process = ingest(gateway, str(source), "--email", email, "--chunk-mb", "1", state=state)
    code, out, err = finished(process)
    assert code == 0, (out, err)
    assert "status: ready" in out
    assert "upload" in err  # the progress bars
    assert "processing" in err
    (video,) = gateway.mine(auth)
    assert video["title"] == "beach day"
    assert video["status"] == "ready"
    assert [r["height"] for r in video["renditions"]] == [240, 144]
    assert gateway.original(video["id"]) == source.read_bytes()
    # The private video's play link is signed and plays.
    (link,) = [line[6:] for line in out.splitlines() if line.startswith("play: ")][-1:]
    assert "token=" in link
    assert httpx.get(link).status_code == 200
    assert json.loads(state.read_text()) == {}  # nothing left to resume


def test_an_interrupted_ingest_resumes_where_it_stopped(gateway: Gateway, tmp_path: Path) -> None:
    data = os.urandom(48 * 1024 * 1024)  # not a video: only the upload matters here
    source = tmp_path / "long.mov"
    source.write_bytes(data)
    email, auth = gateway.account()
    state = tmp_path / "state.json"
    args = (str(source), "--email", email, "--chunk-mb", "1", "--no-wait")
    first = ingest(gateway, *args, state=state)
    deadline = time.monotonic() + 60
    while "url" not in (state.read_text() if state.exists() else ""):
        assert first.poll() is None, finished(first)
        assert time.monotonic() < deadline
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)  # caught early in the upload, then interrupted (Ctrl-C)
    first.send_signal(signal.SIGINT)
    first.send_signal(signal.SIGCONT)
    code, _, err = finished(first)
    assert code == 130, err
    assert "run the same command to resume" in err
    url = next(iter(json.loads(state.read_text()).values()))["url"]
    head = httpx.head(url, headers={**auth, "tus-resumable": "1.0.0"})
    stopped_at = int(head.headers["upload-offset"])
    assert stopped_at < len(data)

    code, out, err = finished(ingest(gateway, *args, state=state))
    assert code == 0, (out, err)
    assert "resuming the upload" in out
    (video,) = gateway.mine(auth)  # the same video, not a second one
    assert gateway.original(video["id"]) == data
    stored = hashlib.new("md5", gateway.original(video["id"]), usedforsecurity=False)
    assert stored.hexdigest() == hashlib.new("md5", data, usedforsecurity=False).hexdigest()


def test_a_file_that_is_not_a_video_fails_with_its_reason(gateway: Gateway, tmp_path: Path) -> None:
    source = tmp_path / "notes.mp4"
    source.write_bytes(b"these are my notes, not a video\n" * 2000)
    email, _ = gateway.account()
    code, out, err = finished(ingest(gateway, str(source), "--email", email, state=tmp_path / "s"))
    assert code == 1, (out, err)
    assert "failed: " in out
    reason = out.split("failed: ", 1)[1]
    assert "video" in reason.lower(), reason


def test_bad_credentials_and_missing_files_are_explained(gateway: Gateway, tmp_path: Path) -> None:
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"x" * 1000)
    email, _ = gateway.account()
    state = tmp_path / "s"
    code, _, err = finished(
        ingest(gateway, str(source), "--email", email, state=state, password="wrong password 1")
    )
    assert code == 2
    assert "clipsync ingest:" in err
    assert "401" in err or "password" in err.lower()
    assert "Traceback" not in err
    code, _, err = finished(
        ingest(gateway, str(tmp_path / "missing.mp4"), "--email", email, state=state)
    )
    assert (code, "no such file" in err) == (2, True)
    code, _, err = finished(ingest(gateway, str(source), state=state))
    assert (code, "give --token" in err) == (2, True)
