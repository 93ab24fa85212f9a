"""Storage building blocks from tables: the read planner, the retry policy, URLs and writes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.blocking import BlockingRunner
from backends.errors import BadMedia, MediaNotFound, SourceChanged, StorageUnavailable
from backends.storage import StorageURLError, deadline_scope, display_url, open_storage, readplan
from backends.storage.retry import Failure, Retrier, RetryPolicy
from conf.settings import StorageSettings


@pytest.mark.parametrize(
    ("ranges", "limit", "expected"),
    [
        ([(0, 10)], 4, [(0, 4), (4, 8), (8, 10)]),
        ([(0, 8)], 4, [(0, 4), (4, 8)]),
        ([(5, 6), (100, 103)], 2, [(5, 6), (100, 102), (102, 103)]),
        ([(7, 7)], 4, []),
        ([], 4, []),
    ],
)
def test_split_ranges(
    ranges: list[tuple[int, int]], limit: int, expected: list[tuple[int, int]]
) -> None:
    assert readplan.split_ranges(ranges, limit) == expected


@pytest.mark.parametrize(
    ("lengths", "limit", "expected"),
    [
        # (buffer lengths of one read at offset 100, limit) -> (start, end, buffer lengths)
        ([3, 5, 7], 100, [(100, 115, [3, 5, 7])]),
        ([3, 5, 7], 8, [(100, 108, [3, 5]), (108, 115, [7])]),
        ([10], 4, [(100, 104, [4]), (104, 108, [4]), (108, 110, [2])]),
        (
            [3, 6],
            4,
            [(100, 104, [3, 1]), (104, 108, [4]), (108, 109, [1])],
        ),
    ],
)
def test_split_reads(
    lengths: list[int], limit: int, expected: list[tuple[int, int, list[int]]]
) -> None:
    buffers = [memoryview(bytearray(n)) for n in lengths]
    parts = readplan.split_reads([(100, buffers)], limit)
    assert [(p.start, p.end, [len(b) for b in p.buffers]) for p in parts] == expected
    # Filling the parts from the "file" fills every original buffer with its own bytes.
    source = bytes(range(256)) * 2
    for part in parts:
        data = source[part.start : part.end]
        pos = 0
        for buffer in part.buffers:
            buffer[:] = data[pos : pos + len(buffer)]
            pos += len(buffer)
    assert b"".join(bytes(b) for b in buffers) == source[100 : 100 + sum(lengths)]


def test_split_rejects_zero_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        readplan.split_ranges([(0, 1)], 0)


@pytest.mark.parametrize(
    ("library", "shown"),
    [
        ("./data", "./data"),
        ("s3://bucket/videos", "s3://bucket/videos"),
        ("https://user:pa55@origin.example/media", "https://origin.example/media"),
        ("http://origin.example:8080/a", "http://origin.example:8080/a"),
        (
            "abfs://media@acct.dfs.core.windows.net/lib",
            "abfs://media@acct.dfs.core.windows.net/lib",
        ),
    ],
)
def test_display_url_drops_credentials(library: str, shown: str) -> None:
    assert display_url(library) == shown


@pytest.mark.parametrize(
    ("library", "message"),
    [
        ("ftp://host/x", "unsupported storage URL scheme 'ftp'"),
        ("s3://bucket/x?X-Amz-Signature=abc", "no query string"),
        ("az:///prefix", "name a container"),
        ("az://media/prefix", "azure_account_name"),
        ("s3:///x", "name a bucket"),
    ],
)
def test_bad_library_urls(library: str, message: str) -> None:
    with pytest.raises(StorageURLError, match=message) as caught:
        open_storage(StorageSettings(library=library), BlockingRunner(1))
    assert "abc" not in str(caught.value)


def test_settings_repr_hides_secrets() -> None:
    settings = StorageSettings(s3_secret="s3cr3t-value", azure_account_key="k3y-value")
    assert "s3cr3t-value" not in repr(settings)
    assert "k3y-value" not in repr(settings)


# The retry policy, with a stand-in for one store call.


def _retrier(**policy: float) -> Retrier:
    def classify(exc: BaseException) -> tuple[Failure, str]:
        kinds = {
            FileNotFoundError: Failure.NOT_FOUND,
            PermissionError: Failure.DENIED,
            LookupError: Failure.CHANGED,
        }
        return kinds.get(type(exc), Failure.TRANSIENT), type(exc).__name__

    defaults = {"base_delay": 0.001, "max_delay": 0.01, "attempt_timeout": 1.0, "deadline": 5.0}
    defaults.update(policy)
    return Retrier(
        "test", RetryPolicy(attempts=int(defaults.pop("attempts", 4)), **defaults), classify
    )


class Flaky:
    """Fails with ``errors`` in turn, then answers."""

    def __init__(self, *errors: BaseException, delay: float = 0.0) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.delay = delay

    async def __call__(self) -> str:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.mark.anyio
async def test_transient_failures_are_retried() -> None:
    op = Flaky(ConnectionRefusedError(), OSError("reset"))
    assert await _retrier().call("read", "a.mp4", op) == "ok"
    assert op.calls == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileNotFoundError(), MediaNotFound),
        (LookupError(), SourceChanged),
        (PermissionError(), StorageUnavailable),
    ],
)
async def test_final_failures_are_not_retried(
    error: BaseException, expected: type[Exception]
) -> None:
    op = Flaky(error)
    with pytest.raises(expected) as caught:
        await _retrier().call("read", "a.mp4", op)
    assert op.calls == 1
    if expected is StorageUnavailable:
        assert "credentials" in str(caught.value)
        assert caught.value.retry_after == 30  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_retries_are_bounded() -> None:
    op = Flaky(*[ConnectionResetError()] * 10)
    with pytest.raises(
        StorageUnavailable, match=r"read a.mp4: ConnectionResetError \(4 attempts\)"
    ):
        await _retrier(attempts=4).call("read", "a.mp4", op)
    assert op.calls == 4


@pytest.mark.anyio
async def test_slow_store_times_out_per_attempt_and_within_the_deadline() -> None:
    op = Flaky(delay=10.0)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="timed out"):
        await _retrier(attempt_timeout=0.2, deadline=0.5).call("read", "a.mp4", op)
    assert time.monotonic() - started < 0.8
    assert op.calls >= 2  # retried after the first timeout, then the deadline ended it


@pytest.mark.anyio
async def test_request_deadline_bounds_every_call_inside_it() -> None:
    retrier = _retrier(attempt_timeout=5.0, deadline=30.0)
    started = time.monotonic()
    with deadline_scope(0.3), pytest.raises(StorageUnavailable):
        await retrier.call("stat", "a.mp4", Flaky(delay=10.0))
    assert time.monotonic() - started < 0.6
    # Outside the scope the store's own deadline applies again.
    assert await retrier.call("stat", "a.mp4", Flaky()) == "ok"


@pytest.mark.anyio
async def test_failures_log_no_store_text(caplog: pytest.LogCaptureFixture) -> None:
    secret = "https://acct.blob.core.windows.net/c/a.mp4?sig=SECRET-SIGNATURE"
    caplog.set_level(logging.WARNING, "clipsync.storage")
    with pytest.raises(StorageUnavailable) as caught:
        await _retrier(attempts=2).call("read", "a.mp4", Flaky(OSError(secret), OSError(secret)))
    assert "SECRET" not in str(caught.value)
    assert caplog.records, "a failing store is reported"
    assert all("SECRET" not in r.getMessage() for r in caplog.records)


# The memory store through RemoteStorage: the remote path without a server.


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.anyio
async def test_memory_storage_reads_writes_and_detects_replacement() -> None:
    settings = StorageSettings(library="memory://test-remote-path", max_read_mb=0.0625)
    storage = open_storage(settings, BlockingRunner(1))
    try:
        data = os.urandom(300_000)
        info = await storage.write("v/a.mp4", _chunks(data[:1000], data[1000:]))
        assert (info.kind, info.size) == ("file", len(data))
        assert (await storage.stat("v")).kind == "directory"
        assert [e.name for e in await storage.list("v")] == ["a.mp4"]
        # Bigger than max_read (64 KiB): split, fetched concurrently, reassembled in order.
        assert await storage.read_range("v/a.mp4", 10, 200_010, info.etag) == data[10:200_010]
        buffers = [memoryview(bytearray(n)) for n in (70_000, 5, 100_000)]
        await storage.read_into("v/a.mp4", [(1, buffers[:2]), (90_000, buffers[2:])], info.etag)
        assert bytes(buffers[0]) + bytes(buffers[1]) == data[1:70_006]
        assert bytes(buffers[2]) == data[90_000:190_000]
        with pytest.raises(BadMedia, match="ended early"):
            await storage.read_range("v/a.mp4", 299_990, 300_010, info.etag)
        await storage.write("v/a.mp4", _chunks(b"new content"))
        with pytest.raises(SourceChanged):
            await storage.read_range("v/a.mp4", 0, 4, info.etag)
        assert (await storage.stat("v/a.mp4", max_age=60)).size == len(b"new content")
        await storage.delete("v/a.mp4")
        with pytest.raises(MediaNotFound):
            await storage.stat("v/a.mp4")
    finally:
        await storage.close()


# Local writes: streamed, atomic, nothing left behind on failure.


@pytest.mark.anyio
async def test_local_write_is_atomic(tmp_path: Path) -> None:
    storage = open_storage(StorageSettings(library=str(tmp_path)), BlockingRunner(2))
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a.mp4").write_bytes(b"old")

    async def interrupted() -> AsyncIterator[bytes]:
        yield b"half of the new"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.write("v/a.mp4", interrupted())
    assert (tmp_path / "v" / "a.mp4").read_bytes() == b"old"
    assert os.listdir(tmp_path / "v") == ["a.mp4"], "no temporary file left behind"

    info = await storage.write("v/b/c.mp4", _chunks(b"x" * 10, b"y" * 5))
    assert (tmp_path / "v" / "b" / "c.mp4").read_bytes() == b"x" * 10 + b"y" * 5
    assert info.size == 15
    with pytest.raises(MediaNotFound):
        await storage.write("", _chunks(b"x"))


@pytest.mark.parametrize(
    ("holes", "wanted", "gap", "overfetch", "expected"),
    [
        ([0, 164_000, 57_490], 3_894_637, 65_536, 0.0, 65_536),  # off: the plain gap
        ([0, 164_000, 57_490], 3_894_637, 65_536, 0.05, 65_536),  # 221 KB > 5%: unchanged
        ([0, 164_000, 57_490], 3_894_637, 65_536, 0.08, 164_000),  # within 8%: one request
        ([300_000, 10, 20], 1_000_000, 0, 0.01, 20),  # smallest first, until the budget ends
        ([], 100, 64, 0.5, 64),
    ],
)
def test_widened_gap(
    holes: list[int], wanted: int, gap: int, overfetch: float, expected: int
) -> None:
    import numpy as np

    from packager.samples import widened_gap

    assert widened_gap(np.array(holes, np.int64), wanted, gap, overfetch) == expected


@pytest.mark.anyio
async def test_local_append_writes_at_an_offset_and_cuts_back_on_error(tmp_path: Path) -> None:
    storage = open_storage(StorageSettings(library=str(tmp_path)), BlockingRunner(1))
    append = storage.append  # type: ignore[attr-defined]
    assert (await append("u/part", 0, _chunks(b"abc", b"def"))).size == 6
    assert (await append("u/part", 3, _chunks(b"XY"))).size == 5  # cut to 3, then written
    assert (tmp_path / "u" / "part").read_bytes() == b"abcXY"
    with pytest.raises(MediaNotFound, match="holds 5 bytes"):
        await append("u/part", 9, _chunks(b"z"))
    with pytest.raises(MediaNotFound):
        await append("u/missing", 4, _chunks(b"z"))
    with pytest.raises(MediaNotFound):
        await append("../outside", 0, _chunks(b"z"))

    async def failing() -> AsyncIterator[bytes]:
        yield b"h" * (2 * 1024 * 1024)  # past one write batch: it reaches the file
        raise ValueError("the body was refused")

    with pytest.raises(ValueError, match="refused"):
        await append("u/part", 5, failing())
    assert (tmp_path / "u" / "part").read_bytes() == b"abcXY"  # nothing of the failed write
    await storage.close()
