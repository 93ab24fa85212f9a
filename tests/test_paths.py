"""Client paths never escape the library root."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.blocking import BlockingRunner
from backends.errors import MediaNotFound
from backends.paths import clean
from backends.storage import open_storage


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a.mp4", "a.mp4"),
        ("movies/a.mp4", "movies/a.mp4"),
        ("movies//a.mp4", "movies/a.mp4"),
        ("movies/", "movies"),
        ("", ""),
        ("..a/b..c/a...mp4", "..a/b..c/a...mp4"),
    ],
)
def test_clean_accepts(given: str, expected: str) -> None:
    assert clean(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "..",
        "../etc/passwd",
        "movies/../../etc/passwd",
        "movies/./a.mp4",
        "/etc/passwd",
        "~/secret",
        "a\\..\\..\\b",
        "a\x00.mp4",
        "a\nb",
        "x" * 2000,
        "/".join(["d"] * 40),
    ],
)
def test_clean_refuses(given: str) -> None:
    with pytest.raises(MediaNotFound):
        clean(given)


@pytest.mark.anyio
async def test_symlink_out_of_root_is_not_found(tmp_path: Path) -> None:
    root = tmp_path / "library"
    root.mkdir()
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"secret")
    (root / "link.mp4").symlink_to(secret)
    (root / "inside.mp4").write_bytes(b"0123456789")
    storage = open_storage(str(root), BlockingRunner(2))
    with pytest.raises(MediaNotFound):
        await storage.stat("link.mp4")
    with pytest.raises(MediaNotFound):
        await storage.read_range("link.mp4", 0, 6)
    assert await storage.read_ranges("inside.mp4", [(0, 2), (5, 8)]) == [b"01", b"567"]


@pytest.mark.anyio
async def test_memory_storage() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/lib-test/dir/a.mp4", b"abcdef")
    storage = open_storage("memory://lib-test", BlockingRunner(2))
    info = await storage.stat("dir/a.mp4")
    assert (info.kind, info.size) == ("file", 6)
    assert await storage.read_range("dir/a.mp4", 1, 4) == b"bcd"
    assert [e.name for e in await storage.list("dir")] == ["a.mp4"]
    assert (await storage.stat("dir")).kind == "directory"
    with pytest.raises(MediaNotFound):
        await storage.stat("dir/missing.mp4")
    fs.pipe("/lib-test/dir/a.mp4", b"abcdefgh")
    assert (await storage.stat("dir/a.mp4")).etag != info.etag


def test_missing_library_folder(tmp_path: Path) -> None:
    with pytest.raises(MediaNotFound, match="does not exist"):
        open_storage(str(tmp_path / "nope"), BlockingRunner(1))
