"""The storage servers of tests/stores.py work, checked with the storage SDKs themselves."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stores import Azurite, LatencyProxy, MotoS3, StaticHttp

PAYLOAD = bytes(range(256)) * 4


def test_azurite_range_read_and_restart(azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    def blob() -> Any:
        service = BlobServiceClient.from_connection_string(azurite.connection_string)
        return service.get_blob_client("stores-test", "clip.bin")

    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    with client:
        client.create_container("stores-test")
        client.get_blob_client("stores-test", "clip.bin").upload_blob(PAYLOAD)
        part = client.get_blob_client("stores-test", "clip.bin").download_blob(offset=10, length=10)
        assert part.readall() == PAYLOAD[10:20]

    azurite.stop()
    azurite.start()
    with blob() as again:
        assert again.download_blob().readall() == PAYLOAD


def test_moto_range_read_and_restart(moto_s3: MotoS3) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="stores-test")
    client.put_object(Bucket="stores-test", Key="clip.bin", Body=PAYLOAD)
    part = client.get_object(Bucket="stores-test", Key="clip.bin", Range="bytes=10-19")
    assert part["Body"].read() == PAYLOAD[10:20]
    client.close()

    moto_s3.stop()
    moto_s3.start()
    client = moto_s3.client()
    assert client.get_object(Bucket="stores-test", Key="clip.bin")["Body"].read() == PAYLOAD
    client.close()


def test_nginx_ranges_etags_and_listing(
    static_http: Callable[[Path], StaticHttp], tmp_path: Path
) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.bin").write_bytes(PAYLOAD)
    server = static_http(tmp_path)
    url = f"{server.base_url}/videos/clip.bin"

    with httpx.Client() as http:
        part = http.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206
        assert part.content == PAYLOAD[10:20]
        etag = part.headers["ETag"]
        # nginx may drop the keep-alive connection after a 412: ask for that up front, so the
        # next request never lands on a connection being closed.
        stale = http.get(
            url, headers={"Range": "bytes=10-19", "If-Match": '"nope"', "Connection": "close"}
        )
        assert stale.status_code == 412
        assert http.get(url, headers={"If-Match": etag}).content == PAYLOAD
        assert 'href="clip.bin"' in http.get(f"{server.base_url}/videos/").text

        server.stop()
        with pytest.raises(httpx.ConnectError):
            http.get(url)
        server.start()
        assert http.get(url).content == PAYLOAD


def test_latency_proxy_delays_and_refuses(
    static_http: Callable[[Path], StaticHttp],
    latency_proxy: Callable[[str, int], LatencyProxy],
    tmp_path: Path,
) -> None:
    (tmp_path / "clip.bin").write_bytes(PAYLOAD)
    server = static_http(tmp_path)
    proxy = latency_proxy("127.0.0.1", server.port)

    with httpx.Client() as http:
        assert http.get(proxy.url_for("/clip.bin")).content == PAYLOAD

    proxy.delay = 0.3
    with httpx.Client() as http:
        started = time.monotonic()
        assert http.get(proxy.url_for("/clip.bin")).content == PAYLOAD
        assert time.monotonic() - started >= 0.3

    # An answer held back by the delay is cut as soon as refuse is set.
    proxy.delay = 10
    with httpx.Client() as http, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http.get, proxy.url_for("/clip.bin"))
        time.sleep(0.2)  # the request is in flight, its answer held in the proxy
        proxy.refuse = True
        with pytest.raises(httpx.TransportError):
            pending.result(timeout=2)
    proxy.delay = 0
    with httpx.Client() as http, pytest.raises(httpx.TransportError):
        http.get(proxy.url_for("/clip.bin"))

    proxy.refuse = False
    with httpx.Client() as http:
        assert http.get(proxy.url_for("/clip.bin")).content == PAYLOAD
