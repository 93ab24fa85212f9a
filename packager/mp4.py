"""Build a MediaIndex from an MP4 in storage, reading only the boxes it needs.

One read fetches the head of the file; when moov is not inside it (moov at the end), the
top-level box headers are walked with small reads until moov is found, and then exactly moov is
read. The parse runs in a thread: a long file's moov is tens of megabytes.
"""

from __future__ import annotations

import struct

from backends.blocking import BlockingRunner
from backends.errors import BadMedia, UnsupportedMedia
from backends.storage import ObjectInfo, Storage
from packager.index import MediaIndex
from packager.moov import parse_moov

HEAD_BYTES = 256 * 1024
_TOP_LEVEL = frozenset(
    {"ftyp", "moov", "mdat", "free", "skip", "wide", "pdin", "uuid", "styp", "sidx", "meta", "pnot"}
)
_MAX_TOP_LEVEL_BOXES = 4096


class _Window:
    """Bytes of the file we already hold, so header reads inside them cost nothing."""

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.start = start

    def has(self, pos: int, length: int) -> bool:
        return self.start <= pos and pos + length <= self.start + len(self.data)

    def slice(self, pos: int, length: int) -> bytes:
        return self.data[pos - self.start : pos - self.start + length]


def _plausible(kind: bytes) -> bool:
    return all(0x20 <= c <= 0x7E for c in kind)


async def locate_moov(
    storage: Storage, info: ObjectInfo, max_moov: int = 1 << 40
) -> tuple[bytes, str]:
    """Return (moov box bytes, major brand). Raises BadMedia with what is wrong."""
    path, size, etag = info.path, info.size, info.etag
    if size < 16:
        raise BadMedia(f"not an MP4 file: only {size} bytes")
    window = _Window(await storage.read_range(path, 0, min(size, HEAD_BYTES), etag), 0)
    pos = 0
    brand = ""
    for number in range(_MAX_TOP_LEVEL_BOXES):
        if pos >= size:
            break
        if size - pos < 8:
            break  # trailing padding after the last box: tolerated
        if not window.has(pos, 16) and not window.has(pos, size - pos):
            window = _Window(await storage.read_range(path, pos, min(size, pos + 16), etag), pos)
        header = window.slice(pos, 16)
        box_size, kind_raw = struct.unpack_from(">I4s", header)
        kind = kind_raw.decode("latin-1")
        if number == 0 and kind not in _TOP_LEVEL:
            raise BadMedia("not an MP4 file: it does not start with an ftyp or moov box")
        if not _plausible(kind_raw):
            raise BadMedia(f"corrupt MP4: unreadable box at offset {pos}")
        header_len = 8
        if box_size == 1:
            if len(header) < 16:
                raise BadMedia(f"the file is truncated inside the {kind!r} box header")
            box_size = struct.unpack_from(">Q", header, 8)[0]
            header_len = 16
        elif box_size == 0:
            box_size = size - pos
        if box_size < header_len:
            raise BadMedia(f"corrupt MP4: box {kind!r} at offset {pos} has size {box_size}")
        if pos + box_size > size:
            raise BadMedia(
                f"the file is truncated: box {kind!r} at offset {pos} needs {box_size} bytes, "
                f"only {size - pos} remain"
            )
        if kind == "ftyp" and window.has(pos, 12):
            brand = window.slice(pos + 8, 4).decode("latin-1")
        if kind == "moof":
            raise UnsupportedMedia("fragmented MP4 is not supported: remux it with one moov")
        if kind == "moov":
            if box_size > max_moov:
                raise UnsupportedMedia(
                    f"moov box of {box_size} bytes exceeds the configured limit of {max_moov}"
                )
            if window.has(pos, box_size):
                return window.slice(pos, box_size), brand
            return await storage.read_range(path, pos, pos + box_size, etag), brand
        pos += box_size
    raise BadMedia("not a playable MP4: no moov box (truncated upload or not an MP4)")


async def read_index(
    storage: Storage, info: ObjectInfo, runner: BlockingRunner, max_moov: int
) -> MediaIndex:
    moov, brand = await locate_moov(storage, info, max_moov)
    return await runner.run(parse_moov, moov, info.size, brand)
