"""Resumable uploads: a tus 1.0.0 server at /api/v1/uploads (core, creation,
creation-with-upload, expiration, checksum, termination).

Each PATCH streams its body into one part object, ``uploads/{upload id}/{offset}``, through the
storage backend (so it works on a folder, S3 or Azure alike, and survives a gateway restart or
lands on another replica); the catalog row holds the offset and admits one writer at a time.
A PATCH cut off mid-way keeps what arrived, as tus asks. After the last byte the parts are
joined into ``videos/{video id}/original/{filename}`` with the MD5 computed on the way, the video
becomes ``uploaded`` and the parts are deleted.

On a local folder the PATCHes append to the first part instead and the finished part is renamed
into place: no join, and, when every PATCH reached this process, no second read for the MD5.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from auth.tokens import Principal
from backends.catalog import Catalog, Video, VideoChanges
from backends.catalog import uploads as store
from backends.catalog.records import storage_folder
from backends.errors import ClipSyncError, Conflict, Forbidden, MediaNotFound, NotFound
from backends.storage import ObjectInfo, Storage, read_blocks
from gateway import tus
from gateway.api.identity import Identity

log = logging.getLogger("clipsync.uploads")


class QuotaExceeded(Forbidden):
    """403: the user's originals and unfinished uploads would pass their quota."""


ROOT = "/api/v1/uploads"
_UNSAFE = re.compile(r"[^\w.\- ]+")


async def awaiting_upload(catalog: Catalog, who: Principal, video_id: str, missing: str) -> Video:
    """The caller's video that still takes its original (status ``uploading``); NotFound with
    ``missing`` if it is not the caller's, Conflict once it has one."""
    video = await catalog.get_video(video_id)
    if video is None or (video.owner_id != who.user_id and not who.admin):
        raise NotFound(missing)
    if video.status != "uploading":
        raise Conflict(f"this video is {video.status}: it takes no upload")
    return video


def part_path(upload_id: str, offset: int) -> str:
    return f"uploads/{upload_id}/{offset:020d}"


@runtime_checkable
class Folder(Protocol):
    """A store that can write into an existing file and rename (a local folder)."""

    async def append(self, path: str, at: int, chunks: AsyncIterable[bytes]) -> ObjectInfo: ...

    async def move(self, source: str, target: str) -> ObjectInfo: ...


def safe_filename(name: str | None) -> str:
    """A storage-safe file name from the client's (no folders, no control characters)."""
    base = unicodedata.normalize("NFC", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    cleaned = _UNSAFE.sub("_", base).strip(" .")[:200]
    return cleaned or "original"


MAX_RUNNING_MD5 = 10_000  # uploads whose MD5 one process keeps running (about 2 MB)


class Uploads:
    def __init__(
        self,
        catalog: Catalog,
        storage: Storage,
        identity: Identity,
        max_bytes: int,
        ttl: float,
        hold: float = 60.0,
        on_complete: Callable[[str], None] | None = None,
        quota: int = 0,
    ) -> None:
        self.quota = quota  # bytes per user, originals and unfinished uploads (0: none)
        self.on_complete = on_complete  # given the video id once its original is stored
        self.catalog = catalog
        self.storage = storage
        self.identity = identity
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.hold = hold  # a writer's claim, renewed while its body streams
        # The MD5 of each upload's bytes so far, while its PATCHes reach this process in
        # order: the original's MD5 then costs no second read (a restart or another replica
        # in between: the join computes it).
        self._md5: dict[str, tuple[int, Any]] = {}

    def _headers(self, upload: store.Upload | None = None, **more: str) -> dict[str, str]:
        headers = {"tus-resumable": tus.VERSION, "cache-control": "no-store", **more}
        if upload is not None:
            headers["upload-expires"] = tus.expires_header(upload.expires_at.timestamp())
        return headers

    async def collection(self, request: Request) -> Response:
        handlers = {"OPTIONS": self.options, "POST": self.create}
        return await handlers[request.method](request)

    async def item(self, request: Request) -> Response:
        handlers = {
            "OPTIONS": self.options,
            "HEAD": self.status,
            "PATCH": self.patch,
            "DELETE": self.terminate,
        }
        return await handlers[request.method](request)

    async def options(self, request: Request) -> Response:
        return Response(status_code=204, headers=tus.options_headers(self.max_bytes))

    async def create(self, request: Request) -> Response:
        who = await self.identity.me(request)
        tus.check_version(request.headers)
        length = tus.non_negative(request.headers, "Upload-Length", self.max_bytes)
        meta = tus.metadata(request.headers.get("upload-metadata"))
        video = await awaiting_upload(
            self.catalog,
            who,
            meta.get("video_id", ""),
            "Upload-Metadata video_id: no such video of yours (create it first)",
        )
        if self.quota:
            used = await store.used_bytes(self.catalog, who.user_id)
            if used + length > self.quota:
                raise QuotaExceeded(
                    f"this upload would take your storage to {(used + length) / 1e9:.2f} GB: "
                    f"your quota is {self.quota / 1e9:.2f} GB"
                )
        upload = await store.create(
            self.catalog,
            video.id,
            who.user_id,
            length,
            safe_filename(meta.get("filename")),
            self.ttl,
        )
        headers = self._headers(upload, location=f"{ROOT}/{upload.id}")
        if request.headers.get("content-type", "").startswith(tus.OFFSET_CONTENT_TYPE):
            offset = await self._append(request, upload, 0)  # creation-with-upload
            headers["upload-offset"] = str(offset)
        return Response(status_code=201, headers=headers)

    async def status(self, request: Request) -> Response:
        upload = await self._mine(request)
        headers = self._headers(
            upload, **{"upload-offset": str(upload.offset), "upload-length": str(upload.length)}
        )
        return Response(status_code=200, headers=headers)

    async def patch(self, request: Request) -> Response:
        upload = await self._mine(request)
        tus.check_version(request.headers)
        if not request.headers.get("content-type", "").startswith(tus.OFFSET_CONTENT_TYPE):
            raise tus.UnsupportedContent(f"send the chunk as {tus.OFFSET_CONTENT_TYPE}")
        offset = tus.non_negative(request.headers, "Upload-Offset")
        if offset != upload.offset:
            raise Conflict(f"Upload-Offset {offset} is not where this upload is: {upload.offset}")
        end = await self._append(request, upload, offset)
        return Response(
            status_code=204, headers=self._headers(upload, **{"upload-offset": str(end)})
        )

    async def terminate(self, request: Request) -> Response:
        upload = await self._mine(request)
        tus.check_version(request.headers)
        await store.remove(self.catalog, upload.id)
        self._md5.pop(upload.id, None)
        await self._drop_parts(upload.id)
        return Response(status_code=204, headers=self._headers())

    async def _mine(self, request: Request) -> store.Upload:
        who = await self.identity.me(request)
        upload = await store.get(self.catalog, request.path_params["upload_id"])
        if upload is None:
            raise NotFound("no such upload")
        if upload.user_id != who.user_id and not who.admin:
            raise Forbidden("this upload is someone else's")
        if upload.completed_at is None and upload.expires_at <= datetime.now(UTC):
            raise NotFound("this upload expired: start a new one")
        return upload

    async def _append(self, request: Request, upload: store.Upload, offset: int) -> int:
        """Streams the body into the part at ``offset``; returns the new offset."""
        wanted = tus.checksum(request.headers.get("upload-checksum"))  # before claiming
        if not await store.claim(self.catalog, upload.id, offset, self.hold):
            raise Conflict("another request is writing to this upload: HEAD it, then resume")
        digest = hashlib.new(wanted[0], usedforsecurity=False) if wanted else None
        at, md5 = self._md5.pop(upload.id, (0, hashlib.md5(usedforsecurity=False)))
        if at != offset:
            md5 = None  # some bytes went through another process: the join hashes them
        received = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal received
            try:
                async for chunk in request.stream():
                    if offset + received + len(chunk) > upload.length:
                        raise tus.UploadTooLarge(
                            f"the body goes past Upload-Length ({upload.length} bytes)"
                        )
                    received += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
                    if md5 is not None:
                        md5.update(chunk)
                    yield chunk
            except ClientDisconnect:
                if digest is not None:  # a partial chunk cannot match its checksum
                    raise
                return  # keep what arrived: the client resumes from here
            if wanted is not None and digest is not None and digest.digest() != wanted[1]:
                raise tus.ChecksumMismatch("the chunk does not match its Upload-Checksum")

        renewing = asyncio.create_task(self._renew(upload.id, offset))
        stored = 0
        try:
            if isinstance(self.storage, Folder) and await self._grows(upload.id, offset):
                await self.storage.append(part_path(upload.id, 0), offset, body())
            else:
                await self.storage.write(part_path(upload.id, offset), body())
            stored = received
            if md5 is not None and stored:
                self._md5[upload.id] = (offset + stored, md5)
                if len(self._md5) > MAX_RUNNING_MD5:  # uploads that moved to other replicas
                    del self._md5[next(iter(self._md5))]
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await store.advance(self.catalog, upload.id, offset, stored)
        if offset + stored == upload.length:
            known = self._md5.pop(upload.id, None)
            await self._assemble(upload, known[1].hexdigest() if known else None)
        return offset + stored

    async def _grows(self, upload_id: str, offset: int) -> bool:
        """Whether the PATCH at ``offset`` can append to the first part: it holds every byte
        before ``offset`` (bytes past it were never accounted for: the append cuts them)."""
        if offset == 0:
            return True
        try:
            return (await self.storage.stat(part_path(upload_id, 0))).size >= offset
        except MediaNotFound:
            return False

    async def _renew(self, upload_id: str, offset: int) -> None:
        while True:
            await asyncio.sleep(self.hold / 3)
            await store.renew(self.catalog, upload_id, offset, self.hold)

    async def _assemble(self, upload: store.Upload, known_md5: str | None = None) -> None:
        """Joins the parts into the original, MD5 on the way (unless ``known_md5``); the video
        becomes uploaded. The one part of a local folder is renamed into place."""
        parts = sorted(
            (int(e.name), e.size)
            for e in await self.storage.list(f"uploads/{upload.id}")
            if e.name.isdigit() and e.size > 0
        )
        position = 0
        for start, size in parts:
            if start != position:
                raise Conflict(f"upload {upload.id} is missing bytes at {position}")
            position += size
        md5 = hashlib.md5(usedforsecurity=False)

        async def joined() -> AsyncIterator[bytes]:
            for start, size in parts:
                async for block in read_blocks(self.storage, part_path(upload.id, start), size):
                    md5.update(block)
                    yield block

        path = f"{storage_folder(upload.video_id)}/original/{upload.filename}"
        if isinstance(self.storage, Folder) and len(parts) == 1:
            if known_md5 is None:  # some PATCHes went through another process
                async for _ in joined():
                    pass
                known_md5 = md5.hexdigest()
            await self.storage.move(part_path(upload.id, 0), path)
        else:
            await self.storage.write(path, joined())
            known_md5 = md5.hexdigest()
        await self.catalog.update_video(
            upload.video_id,
            VideoChanges(
                status="uploaded",
                original_path=path,
                original_size=upload.length,
                original_md5=known_md5,
            ),
        )
        await store.finish(self.catalog, upload.id)
        await self._drop_parts(upload.id)
        if self.on_complete is not None:
            self.on_complete(upload.video_id)

    async def clean_expired(self) -> int:
        """Removes unfinished uploads past their expiry, parts first; how many went. Every
        worker may run it: a second removal of the same upload does nothing."""
        gone = 0
        while expired := await store.expired(self.catalog):
            for upload in expired:
                self._md5.pop(upload.id, None)
                await self._drop_parts(upload.id)
                await store.remove(self.catalog, upload.id)
                gone += 1
        return gone

    async def cleaner(self, interval: float) -> None:
        """Runs ``clean_expired`` every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.clean_expired()
            except Exception as exc:  # the next round tries again
                log.warning("cleaning expired uploads failed: %s", exc)

    async def _drop_parts(self, upload_id: str) -> None:
        with contextlib.suppress(ClipSyncError):
            for entry in await self.storage.list(f"uploads/{upload_id}"):
                await self.storage.delete(f"uploads/{upload_id}/{entry.name}")
