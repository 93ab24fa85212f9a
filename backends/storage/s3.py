"""S3 (and S3-compatible stores) through s3fs's asynchronous client.

s3fs owns the session, credentials and endpoint handling; the calls themselves go through its
``_call_s3`` so that a ranged GET can carry ``If-Match`` (s3fs's ``_cat_file`` cannot) and a
stat is exactly one HEAD. botocore's and s3fs's own retry loops are switched off: retries and
deadlines are ``RemoteStorage``'s. Uploads are multipart with parts of ``block_size`` bytes, so
memory stays at about two parts whatever the object's size, and S3 shows the object only when
the upload completes: an interrupted upload is aborted and never visible.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable
from typing import Any

from backends.storage.base import Entry, ObjectInfo
from backends.storage.retry import Failure, Retrier

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
    "403",
    "401",
}
MIN_PART = 5 * 2**20  # S3's smallest part but the last


def _client_error(exc: BaseException) -> tuple[str, int] | None:
    """(error code, HTTP status) of the botocore ClientError behind ``exc``, if any."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and "Error" in response:
            code = str(response["Error"].get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return code, status
        seen = seen.__cause__ or seen.__context__
    return None


def classify(exc: BaseException) -> tuple[Failure, str]:
    found = _client_error(exc)
    if found is not None:
        code, status = found
        if code in _NOT_FOUND or status == 404:
            return Failure.NOT_FOUND, "not found"
        if code == "PreconditionFailed" or status == 412:
            return Failure.CHANGED, "changed"
        if code == "InvalidRange" or status == 416:
            return Failure.BAD_RANGE, "range outside the object"
        if code in _DENIED or status in (401, 403):
            return Failure.DENIED, f"{code or status}"
        return Failure.TRANSIENT, f"{code or 'HTTP'} {status}".strip()
    if isinstance(exc, FileNotFoundError):
        return Failure.NOT_FOUND, "not found"
    name = type(exc).__name__
    if isinstance(exc, PermissionError) or name in (
        "NoCredentialsError",
        "PartialCredentialsError",
    ):
        return Failure.DENIED, name
    return Failure.TRANSIENT, name


class S3Store:
    def __init__(self, fs: Any, root: str, block_size: int) -> None:
        self.fs = fs
        self.bucket, _, prefix = root.strip("/").partition("/")
        self.prefix = prefix.strip("/")
        self.block_size = max(MIN_PART, block_size)

    @classmethod
    async def connect(
        cls,
        root: str,
        options: dict[str, Any],
        connect_seconds: float,
        block_size: int,
        socket_seconds: float,
    ) -> S3Store:
        # Imported here: only deployments on S3 pay for botocore.
        import s3fs

        config = {
            # Each attempt is bounded by RemoteStorage; the socket limit only needs to allow
            # the longest call (completing a big upload).
            "connect_timeout": connect_seconds,
            "read_timeout": socket_seconds,
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "max_pool_connections": 64,
        }
        fs = s3fs.S3FileSystem(
            asynchronous=True, skip_instance_cache=True, config_kwargs=config, **options
        )
        fs.retries = 1  # s3fs's own retry loop: ours decides
        await fs.set_session()
        return cls(fs, root, block_size)

    def _key(self, path: str) -> str:
        return "/".join(p for p in (self.prefix, path) if p)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await self.fs._call_s3(method, Bucket=self.bucket, **kwargs)

    async def head(self, path: str) -> ObjectInfo:
        key = self._key(path)
        if key:
            try:
                meta = await self._call("head_object", Key=key)
            except Exception as exc:
                if classify(exc)[0] is not Failure.NOT_FOUND:
                    raise
            else:
                stamp = meta.get("LastModified")
                return ObjectInfo(
                    path=path,
                    kind="file",
                    size=int(meta["ContentLength"]),
                    etag=str(meta["ETag"]).strip('"'),
                    mtime=stamp.timestamp() if stamp is not None else 0.0,
                )
        # Not an object: a "folder" if some key lies under it.
        prefix = f"{key}/" if key else ""
        listing = await self._call("list_objects_v2", Prefix=prefix, Delimiter="/", MaxKeys=1)
        if not listing.get("KeyCount") and key:
            raise FileNotFoundError(path)
        return ObjectInfo(path=path, kind="directory", size=0, etag="dir", mtime=0.0)

    async def get(self, path: str, start: int, end: int, etag: str | None) -> bytes:
        extra = {"IfMatch": f'"{etag}"'} if etag else {}
        response = await self._call(
            "get_object", Key=self._key(path), Range=f"bytes={start}-{end - 1}", **extra
        )
        async with response["Body"] as body:
            data: bytes = await body.read()
        return data

    async def listdir(self, path: str) -> list[Entry]:
        key = self._key(path)
        prefix = f"{key}/" if key else ""
        entries: list[Entry] = []
        token: dict[str, str] = {}
        while True:
            page = await self._call("list_objects_v2", Prefix=prefix, Delimiter="/", **token)
            for common in page.get("CommonPrefixes", []):
                name = str(common["Prefix"])[len(prefix) :].strip("/")
                entries.append(Entry(name, "directory", 0))
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(prefix) :]
                if name:  # not the "folder marker" object itself
                    entries.append(Entry(name, "file", int(item["Size"])))
            if not page.get("IsTruncated"):
                break
            token = {"ContinuationToken": page["NextContinuationToken"]}
        if not entries and key:
            raise FileNotFoundError(path)
        return entries

    async def put(self, path: str, chunks: AsyncIterable[bytes], retry: Retrier) -> None:
        key = self._key(path)
        pending = bytearray()
        upload: str | None = None
        parts: list[dict[str, Any]] = []

        async def send(body: bytes) -> None:
            nonlocal upload
            if upload is None:
                started = await retry.call(
                    "start upload", path, lambda: self._call("create_multipart_upload", Key=key)
                )
                upload = str(started["UploadId"])
            number = len(parts) + 1
            done = await retry.call(
                "upload part",
                path,
                lambda: self._call(
                    "upload_part", Key=key, UploadId=upload, PartNumber=number, Body=body
                ),
                attempt_seconds=retry.policy.write_timeout,
            )
            parts.append({"ETag": done["ETag"], "PartNumber": number})

        try:
            async for chunk in chunks:
                pending += chunk
                while len(pending) >= self.block_size:
                    body = bytes(pending[: self.block_size])
                    del pending[: self.block_size]
                    await send(body)
            if upload is None:
                body = bytes(pending)
                await retry.call(
                    "write",
                    path,
                    lambda: self._call("put_object", Key=key, Body=body),
                    attempt_seconds=retry.policy.write_timeout,
                )
                return
            if pending:
                await send(bytes(pending))
            await retry.call(
                "finish upload",
                path,
                lambda: self._call(
                    "complete_multipart_upload",
                    Key=key,
                    UploadId=upload,
                    MultipartUpload={"Parts": parts},
                ),
                # S3 may take long to assemble a big object; the same limit as a part.
                attempt_seconds=retry.policy.write_timeout,
            )
        except BaseException:
            if upload is not None:
                # Shielded: a cancelled upload still tells S3 to drop its parts.
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self._call("abort_multipart_upload", Key=key, UploadId=upload)
                    )
            raise

    async def delete(self, path: str) -> None:
        await self._call("delete_object", Key=self._key(path))

    async def close(self) -> None:
        client = getattr(self.fs, "_s3", None)
        if client is not None:
            await client.close()
