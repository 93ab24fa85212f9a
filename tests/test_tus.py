"""tus header parsing, from tables: what parses, and the 4xx (with the header named) otherwise."""

from __future__ import annotations

import base64
import hashlib

import pytest

from backends.errors import InvalidRequest
from gateway import tus


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (None, {}),
        ("", {}),
        (f"filename {b64('a.mp4')}", {"filename": "a.mp4"}),
        (
            f"filename {b64('été 🎬.mov')},title {b64('Holiday')}",
            {"filename": "été 🎬.mov", "title": "Holiday"},
        ),
        (f" filename {b64('a.mp4')} , is_private", {"filename": "a.mp4", "is_private": ""}),
    ],
)  # fmt: skip
def test_metadata(header: str | None, parsed: dict[str, str]) -> None:
    assert tus.metadata(header) == parsed


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("filename not-base64!", "not base64"),
        ("filename " + base64.b64encode(bytes([0xFF, 0xFE])).decode(), "UTF-8"),
        (f"filename {b64('a')},filename {b64('b')}", "given twice"),
        (f"file name {b64('a')}", "not 'key base64'"),
        (f"k\u00e9y {b64('a')}", "not 'key base64'"),
        ("x" * 5000, "longer than"),
        (",".join(f"k{n} {b64('v')}" for n in range(40)), "more than 32 pairs"),
    ],
)
def test_bad_metadata(header: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        tus.metadata(header)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0", 0), ("17", 17), (" 42 ", 42), ("9223372036854775807", 9223372036854775807)],
)
def test_offsets(raw: str, expected: int) -> None:
    assert tus.non_negative({"upload-offset": raw}, "Upload-Offset") == expected


@pytest.mark.parametrize("raw", ["-1", "01", "1.5", "1e3", "", "abc", "+5", "1" * 20, "٣"])
def test_bad_offsets(raw: str) -> None:
    with pytest.raises(InvalidRequest, match="Upload-Offset must be a non-negative integer"):
        tus.non_negative({"upload-offset": raw}, "Upload-Offset")


def test_missing_and_too_large() -> None:
    with pytest.raises(InvalidRequest, match="missing Upload-Length"):
        tus.non_negative({}, "Upload-Length")
    with pytest.raises(tus.UploadTooLarge, match="over this server's maximum"):
        tus.non_negative({"upload-length": "101"}, "Upload-Length", limit=100)


def test_checksums() -> None:
    data = b"chunk of video"
    for algorithm in ("sha1", "md5"):
        digest = hashlib.new(algorithm, data).digest()
        header = f"{algorithm.upper()} {base64.b64encode(digest).decode()}"
        assert tus.checksum(header) == (algorithm, digest)
    assert tus.checksum(None) is None


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("crc32 AAAA", "not supported"),
        ("sha256 " + base64.b64encode(b"x" * 32).decode(), "not supported"),
        ("sha1 !!!", "not base64"),
        ("md5 " + base64.b64encode(b"short").decode(), "16 bytes"),
        ("sha1", "20 bytes"),
    ],
)
def test_bad_checksums(header: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        tus.checksum(header)


def test_versions_and_capabilities() -> None:
    tus.check_version({"tus-resumable": "1.0.0"})
    with pytest.raises(InvalidRequest, match="missing Tus-Resumable"):
        tus.check_version({})
    with pytest.raises(tus.VersionMismatch, match="not supported"):
        tus.check_version({"tus-resumable": "0.2.2"})
    headers = tus.options_headers(2 * 1024**3)
    assert headers["tus-max-size"] == str(2 * 1024**3)
    assert set(headers["tus-extension"].split(",")) >= {"creation", "termination", "checksum"}
    assert tus.expires_header(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
