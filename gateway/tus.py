"""The tus 1.0.0 resumable-upload protocol's headers: pure parsing, one function per header.

Everything a client sends is checked here before an upload is touched: a header that does not
parse is a 400 with the header named (never a 500, never a partially applied request).
https://tus.io/protocols/resumable-upload (core, creation, creation-with-upload, expiration,
checksum, termination).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from email.utils import formatdate
from typing import Final

from backends.errors import InvalidRequest

VERSION: Final = "1.0.0"
EXTENSIONS: Final = ("creation", "creation-with-upload", "expiration", "checksum", "termination")
CHECKSUMS: Final = ("sha1", "md5")
CHECKSUM_MISMATCH: Final = 460  # tus's own status: the chunk's checksum did not match
OFFSET_CONTENT_TYPE: Final = "application/offset+octet-stream"

MAX_METADATA_CHARS = 4096
MAX_METADATA_PAIRS = 32
_DIGITS = re.compile(r"0|[1-9][0-9]{0,18}")  # canonical, at most 19 digits (fits int64)
_KEY = re.compile(r"[A-Za-z0-9._~-]{1,64}")  # ASCII, no spaces or commas (as the spec requires)
_DIGEST_BYTES = {"sha1": 20, "md5": 16}


def check_version(headers: Mapping[str, str]) -> None:
    """Every request but OPTIONS names the protocol version; 412 is for a version we lack."""
    given = headers.get("tus-resumable")
    if given is None:
        raise InvalidRequest("missing Tus-Resumable header (this server speaks tus 1.0.0)")
    if given.strip() != VERSION:
        raise VersionMismatch(f"tus version {given.strip()[:20]!r} is not supported: use 1.0.0")


class VersionMismatch(InvalidRequest):
    """412 Precondition Failed, with Tus-Version listing what we speak."""


def non_negative(headers: Mapping[str, str], name: str, limit: int | None = None) -> int:
    """A required ``Upload-Offset``/``Upload-Length``-style header: canonical decimal digits."""
    raw = headers.get(name.lower())
    if raw is None:
        raise InvalidRequest(f"missing {name} header")
    value = raw.strip()
    if not _DIGITS.fullmatch(value):
        raise InvalidRequest(f"{name} must be a non-negative integer, not {value[:24]!r}")
    number = int(value)
    if limit is not None and number > limit:
        raise UploadTooLarge(f"{name} {number} is over this server's maximum of {limit} bytes")
    return number


class UploadTooLarge(InvalidRequest):
    """413: the declared or received size is past ``Tus-Max-Size``."""


class ChecksumMismatch(InvalidRequest):
    """460: a PATCH body does not match its Upload-Checksum; nothing of it was kept."""


class UnsupportedContent(InvalidRequest):
    """415: a PATCH must carry application/offset+octet-stream."""


def metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional), keys
    unique. Values must be UTF-8 text (filenames and titles here)."""
    if header is None or not header.strip():
        return {}
    if len(header) > MAX_METADATA_CHARS:
        raise InvalidRequest(f"Upload-Metadata is longer than {MAX_METADATA_CHARS} characters")
    pairs = header.split(",")
    if len(pairs) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"Upload-Metadata has more than {MAX_METADATA_PAIRS} pairs")
    out: dict[str, str] = {}
    for pair in pairs:
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not _KEY.fullmatch(parts[0]):
            raise InvalidRequest(f"Upload-Metadata: {pair.strip()[:40]!r} is not 'key base64'")
        key = parts[0]
        if key in out:
            raise InvalidRequest(f"Upload-Metadata: key {key!r} given twice")
        try:
            raw = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
            out[key] = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidRequest(
                f"Upload-Metadata: the value of {key!r} is not base64 of UTF-8 text"
            ) from None
    return out


def checksum(header: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; None when absent."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUMS:
        raise InvalidRequest(
            f"Upload-Checksum algorithm {algorithm[:16]!r} is not supported: use sha1 or md5"
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise InvalidRequest("Upload-Checksum: the digest is not base64") from None
    if len(digest) != _DIGEST_BYTES[algorithm]:
        raise InvalidRequest(
            f"Upload-Checksum: a {algorithm} digest is {_DIGEST_BYTES[algorithm]} bytes"
        )
    return algorithm, digest


def expires_header(epoch_seconds: float) -> str:
    """``Upload-Expires`` in the RFC 9110 date format."""
    return formatdate(epoch_seconds, usegmt=True)


def options_headers(max_size: int) -> dict[str, str]:
    return {
        "tus-resumable": VERSION,
        "tus-version": VERSION,
        "tus-extension": ",".join(EXTENSIONS),
        "tus-max-size": str(max_size),
        "tus-checksum-algorithm": ",".join(CHECKSUMS),
    }
