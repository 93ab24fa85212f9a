"""Cache keys and purge tags: pure functions of what an object was made from.

A key is a digest of everything the object depends on (source version, format versions,
settings), so a replaced source or an upgraded packager never finds an old object. A purge tag
names one library path; an object carries the tags of its source files and of every folder
above them, so purging a folder drops everything packaged from files under it.
"""

from __future__ import annotations

import hashlib


def digest(*parts: object) -> str:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def key(kind: str, *parts: object) -> str:
    return f"{kind}:{digest(*parts)}"


def tag(library: str, path: str) -> str:
    """The purge tag of one cleaned library path ('' is the whole library)."""
    return digest("tag", library, path)


def tags_for(library: str, *paths: str) -> frozenset[str]:
    """Tags of ``paths`` and of every folder above them, the library root included."""
    out: set[str] = set()
    for path in paths:
        parts = path.split("/") if path else []
        out.update(tag(library, "/".join(parts[:n])) for n in range(len(parts) + 1))
    return frozenset(out)
