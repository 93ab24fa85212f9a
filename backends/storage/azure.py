"""Azure Blob Storage through adlfs and the Azure SDK's asynchronous clients.

adlfs builds the authenticated service client from any of the credential kinds an operator
may have (connection string, account key, SAS token, DefaultAzureCredential). The hot-path
calls then use that client directly, because adlfs's ``_cat_file`` cannot make a read
conditional on the ETag and its ``_info`` may list a folder to answer: here a stat is one
``Get Blob Properties`` and a read one ranged ``Get Blob`` with ``If-Match``. The SDK's own
retries are off for those calls (``retry_total=0``): ``RemoteStorage`` retries under the
request's deadline. Uploads stream as staged blocks committed in one ``Put Block List``, so a
half-written blob is never visible and memory stays at a few blocks.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterable
from typing import Any

from backends.storage.base import Entry, ObjectInfo
from backends.storage.retry import Failure, Retrier

_DENIED = {"ClientAuthenticationError", "CredentialUnavailableError"}


def classify(exc: BaseException) -> tuple[Failure, str]:
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if name == "ResourceNotFoundError" or status == 404 or isinstance(exc, FileNotFoundError):
        return Failure.NOT_FOUND, "not found"
    if name == "ResourceModifiedError" or status == 412:
        return Failure.CHANGED, "changed"
    if status == 416:
        return Failure.BAD_RANGE, "range outside the object"
    if name in _DENIED or status in (401, 403) or isinstance(exc, PermissionError):
        return Failure.DENIED, f"{name} {status or ''}".strip()
    return Failure.TRANSIENT, f"{name} {status or ''}".strip()


class AzureStore:
    def __init__(self, fs: Any, root: str, credential: Any) -> None:
        self.fs = fs
        self.container, _, prefix = root.strip("/").partition("/")
        self.prefix = prefix.strip("/")
        self.credential = credential
        self.client = fs.service_client.get_container_client(self.container)

    @classmethod
    async def connect(
        cls,
        root: str,
        options: dict[str, Any],
        default_credential: bool,
        connect_seconds: float,
        socket_seconds: float,
    ) -> AzureStore:
        # Imported here: only deployments on Azure pay for the SDK.
        from adlfs import AzureBlobFileSystem

        credential = None
        if default_credential:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
            options = {**options, "credential": credential}
        fs = AzureBlobFileSystem(
            asynchronous=True,
            skip_instance_cache=True,
            # Each attempt is bounded by RemoteStorage; the socket limits allow the longest call.
            connection_timeout=int(max(1, connect_seconds)),
            read_timeout=int(max(1, socket_seconds)),
            **options,
        )
        return cls(fs, root, credential)

    def _key(self, path: str) -> str:
        return "/".join(p for p in (self.prefix, path) if p)

    async def head(self, path: str) -> ObjectInfo:
        key = self._key(path)
        if key:
            try:
                props = await self.client.get_blob_client(key).get_blob_properties(retry_total=0)
            except Exception as exc:
                if classify(exc)[0] is not Failure.NOT_FOUND:
                    raise
            else:
                return ObjectInfo(
                    path=path,
                    kind="file",
                    size=int(props.size),
                    etag=str(props.etag).strip('"'),
                    mtime=props.last_modified.timestamp() if props.last_modified else 0.0,
                )
        # Not a blob: a "folder" if some blob lies under it.
        prefix = f"{key}/" if key else ""
        async for _ in self.client.list_blobs(
            name_starts_with=prefix, results_per_page=1, retry_total=0
        ):
            break
        else:
            if key:
                raise FileNotFoundError(path)
        return ObjectInfo(path=path, kind="directory", size=0, etag="dir", mtime=0.0)

    async def get(self, path: str, start: int, end: int, etag: str | None) -> bytes:
        from azure.core import MatchConditions

        condition: dict[str, Any] = {}
        if etag:
            condition = {"etag": f'"{etag}"', "match_condition": MatchConditions.IfNotModified}
        download = await self.client.get_blob_client(self._key(path)).download_blob(
            offset=start, length=end - start, max_concurrency=1, retry_total=0, **condition
        )
        data: bytes = await download.readall()
        return data

    async def listdir(self, path: str) -> list[Entry]:
        key = self._key(path)
        prefix = f"{key}/" if key else ""
        entries = []
        async for item in self.client.walk_blobs(name_starts_with=prefix, delimiter="/"):
            name = str(item.name)[len(prefix) :]
            if name.endswith("/"):
                entries.append(Entry(name.rstrip("/"), "directory", 0))
            elif name:
                entries.append(Entry(name, "file", int(item.size or 0)))
        if not entries and key:
            raise FileNotFoundError(path)
        return entries

    async def put(self, path: str, chunks: AsyncIterable[bytes], retry: Retrier) -> None:
        # Without a length the SDK stages blocks as the stream arrives and commits the block
        # list at the end; the SDK retries each block itself. One block in flight: with more,
        # the SDK's upload tasks outlive a stream that fails midway.
        await self.client.get_blob_client(self._key(path)).upload_blob(
            chunks, overwrite=True, max_concurrency=1
        )

    async def delete(self, path: str) -> None:
        await self.client.get_blob_client(self._key(path)).delete_blob(retry_total=0)

    async def close(self) -> None:
        await self.fs.service_client.close()
        if self.credential is not None:
            await self.credential.close()
        _detach_finalizers(self.fs)


def _detach_finalizers(fs: Any) -> None:
    """adlfs registers finalizers that close its clients again through fsspec's own event loop
    thread; the clients are closed already, and at interpreter exit that loop is gone, so they
    would only print tracebacks."""
    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer in list(registry):
        info = finalizer.peek()
        if info is not None and info[0] is fs:
            finalizer.detach()
