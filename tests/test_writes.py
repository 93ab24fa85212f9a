"""Writes through every backend: streamed with flat memory, atomic, and refused where read-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from backends.errors import MediaNotFound, StorageUnavailable
from conf.settings import StorageSettings
from tests.backends import Libraries, gateway
from tests.serving import settings_env
from tests.stores import StaticHttp

pytestmark = pytest.mark.anyio

BIG_MB = int(os.environ.get("CLIPSYNC_TEST_BIG_WRITE_MB", "1024"))
# Two upload parts / staged blocks in flight plus the interpreter's own churn.
FLAT_MIB = 96


def _storage_settings(backend: str, libraries: Libraries, tmp_path: Path) -> StorageSettings:
    if backend == "file":
        return StorageSettings(library=str(tmp_path))
    return libraries.settings(backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "az", "s3"])
def test_streamed_gigabyte_keeps_memory_flat(
    backend: str, libraries: Libraries, tmp_path: Path
) -> None:
    from conf import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPSYNC_")}
    env.update(settings_env(Settings(storage=_storage_settings(backend, libraries, tmp_path))))
    done = subprocess.run(
        [sys.executable, "-m", "tests.write_probe", "big/stream.bin", str(BIG_MB)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"\n{backend}: {BIG_MB} MiB in {report['seconds']:.1f} s, RSS {report['baseline_mib']:.0f}"
        f" -> {report['peak_mib']:.0f} MiB"
    )
    assert report["size"] == BIG_MB * 2**20
    assert report["peak_mib"] - report["baseline_mib"] < FLAT_MIB, report


async def _interrupted(parts: int) -> AsyncIterator[bytes]:
    for _ in range(parts):
        yield os.urandom(1 << 20)
    raise ConnectionResetError("the uploader went away")


async def _whole(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.parametrize("backend", ["file", "memory", "az", "s3"])
async def test_interrupted_write_is_never_visible(
    backend: str, libraries: Libraries, tmp_path: Path
) -> None:
    async with gateway(_storage_settings(backend, libraries, tmp_path)) as (_, storage):
        name = f"atomic/{backend}.bin"
        await storage.write(name, _whole(b"the old, complete object"))
        # 20 MiB: several upload parts / staged blocks went out before the failure.
        with pytest.raises(ConnectionResetError):
            await storage.write(name, _interrupted(20))
        assert await storage.read_range(name, 0, 24) == b"the old, complete object"
        with pytest.raises(ConnectionResetError):
            await storage.write(f"atomic/new-{backend}.bin", _interrupted(12))
        with pytest.raises(MediaNotFound):
            await storage.stat(f"atomic/new-{backend}.bin")
        await storage.delete(name)
        with pytest.raises(MediaNotFound):
            await storage.stat(name)


async def test_http_origin_is_read_only(
    tmp_path: Path, static_http: Callable[[Path], StaticHttp]
) -> None:
    (tmp_path / "a.bin").write_bytes(b"data")
    async with gateway(StorageSettings(library=static_http(tmp_path).base_url)) as (_, storage):
        assert (await storage.stat("a.bin")).size == 4
        with pytest.raises(StorageUnavailable, match="read-only"):
            await storage.write("a.bin", _whole(b"new"))
        with pytest.raises(StorageUnavailable, match="read-only"):
            await storage.delete("a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"data"
