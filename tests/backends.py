"""The test media library on every storage backend: the same files on a local folder, fsspec's
memory store, Azurite, moto's S3 and nginx, and the gateway over each of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from backends.blocking import BlockingRunner
from backends.storage import Storage, open_storage
from conf.settings import StorageSettings
from tests.conftest import serving, settings_with
from tests.media import CORRUPT, GOOD, MediaLibrary
from tests.stores import Azurite, MotoS3, StaticHttp, nginx_binary

BACKENDS = ("file", "memory", "az", "s3", "http")
REMOTE = BACKENDS[1:]
CONTAINER = "media"
PREFIX = "lib"
# Files above this stay local: the 10-minute and 1080p fixtures are other tests' business.
MAX_MIRRORED = 32 * 2**20


def populate(media: MediaLibrary) -> Path:
    """Generate every file the HTTP suite serves, once."""
    for name in GOOD:
        media.good(name)
    media.ladder()
    media.misaligned()
    for kind in CORRUPT:
        media.corrupt(kind)
    media.unsupported_codec()
    return media.root


def library_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if path.is_file() and not hidden and path.stat().st_size <= MAX_MIRRORED:
            yield relative, path


def mirror_memory(root: Path, name: str) -> StorageSettings:
    import fsspec

    fs = fsspec.filesystem("memory")
    for relative, path in library_files(root):
        fs.pipe_file(f"/{name}/{relative}", path.read_bytes())
    return StorageSettings(library=f"memory://{name}")


def azure_settings(
    azurite: Azurite, endpoint: str | None = None, **extra: object
) -> StorageSettings:
    connection = azurite.connection_string_at(endpoint or azurite.blob_endpoint)
    raw: dict[str, object] = {
        "library": f"az://{CONTAINER}/{PREFIX}",
        "azure_connection_string": connection,
    }
    raw.update(extra)
    return msgspec.convert(raw, StorageSettings)


def upload_azure(files: Iterable[tuple[str, Path]], azurite: Azurite) -> None:
    """Each (name, file) as blob PREFIX/name of CONTAINER (created if missing)."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client(CONTAINER)
        if not container.exists():
            container.create_container()
        for name, path in files:
            with path.open("rb") as data:
                container.upload_blob(f"{PREFIX}/{name}", data, overwrite=True)


def mirror_azure(root: Path, azurite: Azurite) -> StorageSettings:
    upload_azure(library_files(root), azurite)
    return azure_settings(azurite)


def s3_settings(moto: MotoS3, endpoint: str | None = None, **extra: object) -> StorageSettings:
    raw: dict[str, object] = {
        "library": f"s3://{CONTAINER}/{PREFIX}",
        "s3_key": moto.key,
        "s3_secret": moto.secret,
        "s3_region": moto.region,
        "s3_endpoint_url": endpoint or moto.endpoint_url,
    }
    raw.update(extra)
    return msgspec.convert(raw, StorageSettings)


def upload_s3(files: Iterable[tuple[str, Path]], moto: MotoS3) -> None:
    """Each (name, file) as object PREFIX/name of bucket CONTAINER (created if missing)."""
    s3 = moto.client()
    if CONTAINER not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=CONTAINER)
    for name, path in files:
        s3.upload_file(str(path), CONTAINER, f"{PREFIX}/{name}")


def mirror_s3(root: Path, moto: MotoS3) -> StorageSettings:
    upload_s3(library_files(root), moto)
    return s3_settings(moto)


class Libraries:
    """Settings of the populated library per backend, each set up on first use."""

    def __init__(self, request: pytest.FixtureRequest, root: Path) -> None:
        self.request = request
        self.root = root
        self.known: dict[str, StorageSettings] = {}
        self.nginx: StaticHttp | None = None

    def settings(self, backend: str) -> StorageSettings:
        if backend not in self.known:
            self.known[backend] = self._make(backend)
        return self.known[backend]

    def _make(self, backend: str) -> StorageSettings:
        if backend == "file":
            return StorageSettings(library=str(self.root))
        if backend == "memory":
            return mirror_memory(self.root, "parity-library")
        if backend == "az":
            return mirror_azure(self.root, self.request.getfixturevalue("azurite"))
        if backend == "s3":
            return mirror_s3(self.root, self.request.getfixturevalue("moto_s3"))
        if backend == "http":
            self.nginx = StaticHttp(self.root, nginx_binary())
            return StorageSettings(library=self.nginx.base_url)
        raise ValueError(backend)

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.close()


@pytest.fixture(scope="session")
def libraries(request: pytest.FixtureRequest, media: MediaLibrary) -> Iterator[Libraries]:
    found = Libraries(request, populate(media))
    yield found
    found.close()


@contextlib.asynccontextmanager
async def gateway(
    storage_settings: StorageSettings, cache: dict[str, object] | None = None, **vod: object
) -> AsyncIterator[tuple[httpx.AsyncClient, Storage]]:
    """The app in-process over ``storage_settings``; its storage is closed at the end."""
    settings = settings_with(storage_settings, cache, **vod)
    storage = open_storage(settings.storage, BlockingRunner(settings.server.blocking_threads))
    async with serving(settings, storage=storage) as (http, _):
        yield http, storage
