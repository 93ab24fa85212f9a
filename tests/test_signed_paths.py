"""Path mode with ``vod.require_token``: `clipsync sign` URLs play; nothing else does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
import pytest

from auth.playback import PlaybackSigner, for_path
from conf import Settings
from gateway.cli import main
from tests.conftest import serving, settings_for
from tests.media import MediaLibrary

pytestmark = pytest.mark.anyio

SECRET = "p" * 40


def _config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "clipsync.toml"
    path.write_text(
        f'[storage]\nlibrary = "{root}"\n[auth]\nplayback_secret = "{SECRET}"\n'
        "[vod]\nrequire_token = true\n[server]\nport = 9999\n"
    )
    return path


def _sign(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    assert main(["sign", *args, "--config", str(config)]) == 0
    return capsys.readouterr().out.strip()


@pytest.fixture
async def http(media: MediaLibrary) -> AsyncIterator[httpx.AsyncClient]:
    raw = msgspec.to_builtins(settings_for(media.root))
    raw["auth"]["playback_secret"] = SECRET
    raw["vod"]["require_token"] = True
    async with serving(msgspec.convert(raw, Settings)) as (client, _):
        yield client


async def test_signed_urls_play_and_nothing_else_does(
    http: httpx.AsyncClient,
    media: MediaLibrary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    media.ladder()
    config = _config(tmp_path, media.root)
    url = _sign(capsys, config, "ladder/")
    assert url.startswith("http://127.0.0.1:9999/vod/ladder/master.m3u8?token=")
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert (await http.get("/vod/ladder/master.m3u8")).status_code == 403
    assert (await http.get("/vod/ladder/360p/seg-1.m4s")).status_code == 403
    master = await http.get(f"/vod/ladder/master.m3u8?token={token}")
    assert master.status_code == 200
    assert master.headers["cache-control"].startswith("private")
    assert f"360p/index.m3u8?token={token}" in master.text
    assert (await http.get(f"/vod/ladder/360p/seg-1.m4s?token={token}")).status_code == 200
    # A token for one file does not open its neighbours; nor an expired or a tampered one.
    file_url = _sign(capsys, config, "ladder/240p.mp4", "--ttl", "60")
    file_token = parse_qs(urlsplit(file_url).query)["token"][0]
    assert (
        await http.get(f"/vod/ladder/240p.mp4/master.m3u8?token={file_token}")
    ).status_code == 200
    assert (await http.get(f"/vod/ladder/360p/seg-1.m4s?token={file_token}")).status_code == 403
    expired = PlaybackSigner({"k1": SECRET.encode()}, "k1").sign(
        for_path("ladder/"), int(time.time()) - 1
    )
    r = await http.get(f"/vod/ladder/360p/seg-1.m4s?token={expired}")
    assert r.status_code == 403
    assert "expired" in r.json()["detail"]
    assert (await http.get(f"/vod/ladder/master.m3u8?token={token[:-1]}x")).status_code == 403


def test_sign_refuses_what_it_cannot_sign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, tmp_path)
    for args in (["../etc/passwd"], ["a.mp4", "--cidr", "nonsense"], ["a.mp4", "--ttl", "-5"]):
        assert main(["sign", *args, "--config", str(config)]) == 2
        assert "cannot sign" in capsys.readouterr().err
    bare = tmp_path / "bare.toml"
    bare.write_text("")
    assert main(["sign", "a.mp4", "--config", str(bare)]) == 2
    assert "needs auth.playback_secret" in capsys.readouterr().err
