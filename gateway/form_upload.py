"""The single-request upload for small files and curl users:

    curl -H "Authorization: Bearer $TOKEN" -F file=@clip.mp4 \\
         https://video.example.com/api/v1/videos/$ID/original

The multipart body is parsed as it arrives (python-multipart's push parser) and the ``file``
part streams straight into storage with its MD5 computed on the way: nothing is buffered whole,
and the size limit and the quota apply while the bytes come in.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import Response

from backends.catalog import Catalog, VideoChanges
from backends.catalog import uploads as store
from backends.catalog.records import storage_folder
from backends.errors import InvalidRequest
from backends.storage import Storage
from gateway import tus
from gateway.api import http
from gateway.api.identity import Identity
from gateway.uploads import QuotaExceeded, awaiting_upload, safe_filename

FIELD = "file"


class _FilePart:
    """Feeds a request body to the parser; hands out the ``file`` part's bytes as they come."""

    def __init__(self, request: Request, boundary: bytes) -> None:
        self.stream = request.stream().__aiter__()
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.in_file = False
        self.filename: str | None = None
        self.data: list[bytes] = []
        self.done = False
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self) -> None:
        self.headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def _header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field = self.value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if options.get(b"name") == FIELD.encode() and self.filename is None:
            self.in_file = True
            raw = options.get(b"filename", b"original")
            self.filename = raw.decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.data.append(data[start:end])

    def _part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.done = True

    async def _feed(self) -> bool:
        try:
            chunk = await self.stream.__anext__()
        except StopAsyncIteration:
            return False
        try:
            self.parser.write(chunk)
        except Exception as exc:  # python-multipart's errors: a malformed body
            raise InvalidRequest(f"the multipart body is malformed: {exc}") from None
        return True

    async def start(self) -> str:
        """Reads until the ``file`` part's headers; its file name."""
        while self.filename is None:
            if not await self._feed():
                raise InvalidRequest(f"the form has no '{FIELD}' part")
        return self.filename

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self.data:
                yield self.data.pop(0)
            if self.done:
                return
            if not await self._feed():
                raise InvalidRequest(f"the body ended inside the '{FIELD}' part")


class FormUploads:
    def __init__(
        self,
        catalog: Catalog,
        storage: Storage,
        identity: Identity,
        max_bytes: int,
        quota: int,
        on_complete: Callable[[str], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.storage = storage
        self.identity = identity
        self.max_bytes = max_bytes
        self.quota = quota
        self.on_complete = on_complete

    async def original(self, request: Request) -> Response:
        who = await self.identity.me(request)
        video = await awaiting_upload(
            self.catalog, who, request.path_params["video_id"], "no such video of yours"
        )
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        if kind != b"multipart/form-data" or b"boundary" not in options:
            raise InvalidRequest(f"send multipart/form-data with the video as the '{FIELD}' field")
        room = self.max_bytes
        if self.quota:
            room = min(room, self.quota - await store.used_bytes(self.catalog, who.user_id))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes + 64 * 1024:
            raise tus.UploadTooLarge(f"the body is over the {self.max_bytes}-byte limit")
        part = _FilePart(request, options[b"boundary"])
        name = safe_filename(await part.start())
        md5 = hashlib.md5(usedforsecurity=False)
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in part.chunks():
                size += len(chunk)
                if size > room:
                    if size > self.max_bytes:
                        raise tus.UploadTooLarge(
                            f"the file is over the {self.max_bytes}-byte limit"
                        )
                    raise QuotaExceeded("this file would take your storage past your quota")
                md5.update(chunk)
                yield chunk

        path = f"{storage_folder(video.id)}/original/{name}"
        await self.storage.write(path, counted())
        changes = VideoChanges(
            status="uploaded", original_path=path, original_size=size, original_md5=md5.hexdigest()
        )
        await self.catalog.update_video(video.id, changes)
        if self.on_complete is not None:
            self.on_complete(video.id)
        body = {"video_id": video.id, "size": size, "md5": md5.hexdigest()}
        return http.json(body, 201)
