"""Storage: client paths never escape the library root; reads land every byte or fail clearly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from backends.blocking import BlockingRunner
from backends.errors import MediaNotFound, SourceChanged
from backends.paths import clean
from backends.storage import open_storage
from backends.storage.local import _advance
from conf.settings import StorageSettings
from gateway.errors import status_of


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
    storage = open_storage(StorageSettings(library=str(root)), BlockingRunner(2))
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
    storage = open_storage(StorageSettings(library="memory://lib-test"), BlockingRunner(2))
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
        open_storage(StorageSettings(library=str(tmp_path / "nope")), BlockingRunner(1))


@pytest.mark.anyio
async def test_read_of_a_replaced_file_fails_instead_of_mixing_versions(tmp_path: Path) -> None:
    root = tmp_path / "library"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"version one " * 10)
    storage = open_storage(StorageSettings(library=str(root)), BlockingRunner(2))
    before = await storage.stat("a.mp4")
    assert await storage.read_range("a.mp4", 0, 7, before.etag) == b"version"
    replacement = root / ".a.mp4.new"
    replacement.write_bytes(b"VERSION TWO " * 10)
    replacement.replace(root / "a.mp4")  # an operator's atomic replace between stat and read
    with pytest.raises(SourceChanged, match="retry"):
        await storage.read_range("a.mp4", 0, 7, before.etag)
    target = bytearray(7)
    with pytest.raises(SourceChanged):
        await storage.read_into("a.mp4", [(0, [memoryview(target)])], before.etag)
    after = await storage.stat("a.mp4")
    assert after.etag != before.etag
    assert await storage.read_range("a.mp4", 0, 7, after.etag) == b"VERSION"
    assert status_of(SourceChanged("a.mp4"))[0] == 503


@pytest.mark.anyio
async def test_symlinked_folder_inside_the_root_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "library"
    (root / "real").mkdir(parents=True)
    (root / "real" / "a.mp4").write_bytes(b"inside")
    (root / "alias").symlink_to(root / "real")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.mp4").write_bytes(b"secret")
    (root / "escape").symlink_to(outside)
    storage = open_storage(StorageSettings(library=str(root)), BlockingRunner(2))
    assert await storage.read_range("alias/a.mp4", 0, 6) == b"inside"
    with pytest.raises(MediaNotFound):
        await storage.stat("escape/b.mp4")
    with pytest.raises(MediaNotFound):
        await storage.read_range("escape/b.mp4", 0, 6)
    assert (await storage.stat("")).kind == "directory"


@pytest.mark.anyio
@pytest.mark.parametrize("evict", ["nothing", "second half", "everything"])
async def test_scatter_read_lands_every_byte_whether_cached_or_not(
    tmp_path: Path, evict: str
) -> None:
    root = tmp_path / "library"
    root.mkdir()
    data = np.random.default_rng(3).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    path = root / "a.mp4"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    if evict == "second half":
        os.posix_fadvise(fd, len(data) // 2, 0, os.POSIX_FADV_DONTNEED)
    elif evict == "everything":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    # Runs scattered out of order into one buffer, with a hole between two of them in the file.
    out = bytearray(6000 + 898_500 + 1_900_000)
    view = memoryview(out)
    storage = open_storage(StorageSettings(library=str(root)), BlockingRunner(2))
    info = await storage.stat("a.mp4")
    reads = [
        (1500, [view[6000 : 6000 + 898_500]]),
        (0, [view[5000:6000], memoryview(bytearray(500)), view[0:0]]),
        (2_100_000, [view[906_000 : 906_000 + 1_000_000], view[1_906_000 : 1_906_000 + 898_500]]),
    ]
    await storage.read_into("a.mp4", reads, info.etag)
    assert out[5000:6000] == data[0:1000]
    assert out[6000 : 6000 + 898_500] == data[1500:900_000]
    assert out[906_000 : 906_000 + 1_898_500] == data[2_100_000:3_998_500]


def test_advance_skips_filled_buffers() -> None:
    a, b, c = (memoryview(bytearray(n)) for n in (3, 5, 7))
    assert [len(x) for x in _advance([a, b, c], 0)] == [3, 5, 7]
    assert [len(x) for x in _advance([a, b, c], 3)] == [5, 7]
    assert [len(x) for x in _advance([a, b, c], 4)] == [4, 7]
    assert _advance([a, b, c], 15) == []
