"""The Redis tier on a Sentinel-managed master and on a three-node Cluster, each started here
from Debian's redis-server: sharing between replicas and purge work the same as standalone."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import app_client
from tests.media import MediaLibrary
from tests.metrics import scrape
from tests.redis_fixtures import RedisServer, cluster_port
from tests.serving import free_port

pytestmark = pytest.mark.anyio

MEDIA = "h264_30fps_bframes"
SEGMENT = f"/vod/{MEDIA}.mp4/main/seg-1.m4s"
PLAYLIST = f"/vod/{MEDIA}.mp4/main/index.m3u8"
ADMIN = "topology-admin"


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[tuple[str, RedisServer]]:
    master = RedisServer(tmp_path)
    port = free_port()
    config = tmp_path / "sentinel.conf"  # sentinel rewrites its config file: a file of ours
    config.write_text(
        f"port {port}\nbind 127.0.0.1\nsentinel monitor cache 127.0.0.1 {master.port} 1\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    with (tmp_path / "sentinel.log").open("ab") as log:
        process = subprocess.Popen(
            [binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as s:
                if s.execute_command("SENTINEL", "get-master-addr-by-name", "cache"):
                    break
            time.sleep(0.1)
        yield f"redis+sentinel://127.0.0.1:{port}/cache", master
    finally:
        process.terminate()
        process.wait(10)
        master.stop()


@pytest.fixture
def cluster_url(tmp_path: Path) -> Iterator[tuple[str, list[RedisServer]]]:
    nodes: list[RedisServer] = []
    try:
        for n in range(3):
            folder = tmp_path / f"node{n}"
            folder.mkdir()
            cluster = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            nodes.append(RedisServer(folder, *cluster, port=cluster_port()))
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with nodes[0].client() as c:
                if b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO"):
                    break
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}", nodes
    finally:
        for node in nodes:
            node.stop()


def replica(
    root: Path, url: str
) -> contextlib.AbstractAsyncContextManager[tuple[httpx.AsyncClient, Any]]:
    # A generous timeout: these tests are about topology, not a slow Redis.
    return app_client(root, {"redis_url": url, "redis_timeout": 2.0}, {"admin_token": ADMIN})


async def shared_then_purged(root: Path, url: str) -> None:
    async with replica(root, url) as (a, app):
        first = await a.get(SEGMENT)
        assert (await a.get(PLAYLIST)).status_code == 200
        await app.state.library.cache.settle()
    async with replica(root, url) as (b, _):
        again = await b.get(SEGMENT)
        seen = await scrape(b)
        assert again.content == first.content
        assert seen.total("clipsync_cache_builds_total") == 0
        assert seen.value("clipsync_cache_hits_total", tier="redis", kind="segment") == 1
        purge = await b.post(
            "/api/v1/admin/purge",
            json={"path": f"{MEDIA}.mp4"},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert purge.status_code == 200, purge.text
        assert purge.json()["redis"] >= 3  # index, playlist, segment
    async with replica(root, url) as (c, _):
        assert (await c.get(SEGMENT)).content == first.content
        seen = await scrape(c)
        assert seen.value("clipsync_cache_builds_total", kind="segment") == 1


async def test_sentinel(media: MediaLibrary, sentinel_url: tuple[str, RedisServer]) -> None:
    media.good(MEDIA)
    url, master = sentinel_url
    await shared_then_purged(media.root, url)
    with master.client() as c:
        assert c.dbsize() > 0  # the values went to the master the sentinel named


async def test_cluster(media: MediaLibrary, cluster_url: tuple[str, list[RedisServer]]) -> None:
    media.good(MEDIA)
    url, nodes = cluster_url
    await shared_then_purged(media.root, url)
    stored = 0
    for node in nodes:
        with node.client() as c:
            stored += c.dbsize()
    assert stored > 0  # the values went to the cluster's nodes
