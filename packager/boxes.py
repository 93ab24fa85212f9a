"""ISO-BMFF box framing: walking boxes in a buffer, and writing them.

Every size read from a file is checked against its parent before use, so a hostile file ends in
``BadMedia`` with the box named, never in an IndexError or a huge allocation.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from backends.errors import BadMedia

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Box(NamedTuple):
    type: str
    start: int  # offset of the box header in the buffer
    body: int  # offset of the payload
    end: int  # offset just past the box


def fourcc(raw: bytes) -> str:
    return raw.decode("latin-1")


def parse_header(buf: bytes | memoryview, pos: int, limit: int) -> Box:
    """Read one box header at ``pos``; the box must end at or before ``limit``."""
    if pos + 8 > limit:
        raise BadMedia(f"box header at offset {pos} is cut off")
    size = _U32.unpack_from(buf, pos)[0]
    kind = fourcc(bytes(buf[pos + 4 : pos + 8]))
    body = pos + 8
    if size == 1:
        if pos + 16 > limit:
            raise BadMedia(f"box {kind!r} at offset {pos} is cut off")
        size = _U64.unpack_from(buf, pos + 8)[0]
        body = pos + 16
    elif size == 0:
        size = limit - pos
    if size < body - pos:
        raise BadMedia(f"box {kind!r} at offset {pos} has an impossible size {size}")
    if pos + size > limit:
        raise BadMedia(f"box {kind!r} at offset {pos} overruns its container")
    return Box(kind, pos, body, pos + size)


def children(buf: bytes | memoryview, start: int, end: int) -> Iterator[Box]:
    pos = start
    while pos + 8 <= end:
        box = parse_header(buf, pos, end)
        yield box
        pos = box.end


def find(buf: bytes | memoryview, start: int, end: int, kind: str) -> Box | None:
    return next((b for b in children(buf, start, end) if b.type == kind), None)


def find_path(buf: bytes | memoryview, parent: Box, *path: str) -> Box | None:
    box: Box | None = parent
    for kind in path:
        if box is None:
            return None
        box = find(buf, box.body, box.end, kind)
    return box


# Writing -----------------------------------------------------------------------------------


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return _U32.pack(8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, _U32.pack((version << 24) | flags), *payload)
