"""Transcodes and thumbnail sets run in a child process (backends/child.py): answers, errors,
progress, stopping, and no child left behind whatever happens to the parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backends import child
from backends.errors import BadMedia
from tests import child_funcs

pytestmark = pytest.mark.anyio


def gone(pid: int) -> bool:
    """No such process, or only its zombie (in a container nobody may reap an orphan)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def wait_until(check: Callable[[], object], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def written_pid(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else None


async def pid_in(path: Path) -> int:
    for _ in range(400):
        if pid := await asyncio.to_thread(written_pid, path):
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError("the child never started")


async def test_the_answer_and_progress_come_back_from_a_lower_priority_child() -> None:
    seen: list[float] = []
    pid, nice = await child.run(child_funcs.report, 4, on_progress=seen.append, nice=5)
    assert pid != os.getpid()
    assert nice == min(os.nice(0) + 5, 19)
    assert seen == [0.25, 0.5, 0.75, 1.0]


async def test_the_childs_error_is_raised_here_with_its_message() -> None:
    with pytest.raises(BadMedia, match="no video stream"):
        await child.run(child_funcs.bad_media, "no video stream")
    # An error that cannot be pickled still arrives, named.
    with pytest.raises(RuntimeError, match="Unpicklable: cannot travel"):
        await child.run(child_funcs.unpicklable)


async def test_a_child_that_dies_without_an_answer_is_reported() -> None:
    with pytest.raises(child.ChildDied, match=r"without an answer \(exit code 3\)"):
        await child.run(child_funcs.exit_with, 3)


async def test_stop_reaches_the_child_and_it_ends(tmp_path: Path) -> None:
    stop = threading.Event()
    pid_file = tmp_path / "pid"
    running = asyncio.ensure_future(child.run(child_funcs.until_stopped, str(pid_file), stop=stop))
    pid = await pid_in(pid_file)
    started = time.monotonic()
    stop.set()
    with pytest.raises(child_funcs.Halted):
        await running
    assert time.monotonic() - started < 5
    assert wait_until(lambda: gone(pid))


async def test_a_cancelled_caller_leaves_no_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    running = asyncio.ensure_future(
        child.run(child_funcs.until_stopped, str(pid_file), stop=threading.Event())
    )
    pid = await pid_in(pid_file)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert gone(pid)  # stopped and reaped before the cancellation finished


def test_a_killed_parent_leaves_no_child(tmp_path: Path) -> None:
    """A worker killed with SIGKILL mid-transcode: its child notices and exits by itself."""
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import asyncio
        from backends import child
        from tests import child_funcs
        asyncio.run(child.run(child_funcs.forever, {str(pid_file)!r}))
        """
    )
    root = Path(__file__).resolve().parent.parent
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    try:
        assert wait_until(lambda: written_pid(pid_file)), "no child"
        pid = int(pid_file.read_text())
        assert not gone(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_until(lambda: gone(pid), 5.0), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
