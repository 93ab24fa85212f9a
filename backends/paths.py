"""Client-supplied paths, checked before any storage call sees them.

A path from a URL is relative to the library root. It may never name anything outside that root,
so anything that could (``..``, an absolute path, a backslash that some stores treat as a
separator, a NUL byte that truncates C strings) is refused outright instead of being "cleaned".
"""

from __future__ import annotations

from backends.errors import MediaNotFound

_MAX_PATH = 1024
_MAX_SEGMENTS = 32


def clean(path: str) -> str:
    """Return ``path`` as 'a/b/c' if it stays under the root, else raise MediaNotFound.

    Empty segments ('a//b') and a single trailing slash are tolerated; '.' and '..' are not.
    The empty string means the root itself.
    """
    if len(path) > _MAX_PATH:
        raise MediaNotFound("path too long")
    if "\x00" in path or "\\" in path:
        raise MediaNotFound("path contains a forbidden character")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise MediaNotFound("path contains a control character")
    if path.startswith("/") or path.startswith("~"):
        raise MediaNotFound("path must be relative to the library")
    parts = [part for part in path.split("/") if part]
    if len(parts) > _MAX_SEGMENTS:
        raise MediaNotFound("path too deep")
    for part in parts:
        if part in (".", ".."):
            raise MediaNotFound("path may not contain '.' or '..'")
    return "/".join(parts)


def join(parent: str, name: str) -> str:
    """Join a cleaned parent and one cleaned child name."""
    child = clean(name)
    if not child or "/" in child:
        raise MediaNotFound("invalid name")
    return f"{parent}/{child}" if parent else child
