"""Heavy media work (a transcode, a thumbnail set) in a child process at a lower priority.

libx264's threads take every core: beside a transcode at its own priority (in a thread of the
gateway, or a child at nice 0) a gateway worker's playback fell to 15% of its throughput; with
the child at nice 19 it keeps about half (bench/ingest.py, section beside). A thread cannot be
given a lower priority safely: holding the GIL while descheduled, it would stall the event loop.
The child's memory (decoders, encoder lookahead) goes back to the system when it exits, instead
of staying in the gateway's heap.

The child is spawned, not forked: forking a process that runs an event loop and threads copies
locks held by threads that do not exist in the copy. It reports progress and its result (or
error) over a pipe, stops at its next check when asked, and stops on its own when its parent
dies (a worker killed with SIGKILL leaves no transcode running).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_SPAWN = multiprocessing.get_context("spawn")
_CHECK_EVERY = 0.25  # seconds between looks at the stop flag while waiting for the child
_EXIT_GRACE = 10.0  # seconds a stopped child gets to clean up before it is killed
_ORPHANED = 70  # the exit code of a child whose parent died


class ChildDied(RuntimeError):
    """The child process ended without an answer (killed, out of memory, crashed)."""


class Flag(Protocol):
    def is_set(self) -> bool: ...


class _StopFlag:
    """The child's view of ``stop``: the parent's one message on the pipe ("stop")."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.stopped = False

    def is_set(self) -> bool:
        if not self.stopped and self.conn.poll():  # one poll(2) per check: a frame costs more
            self.stopped = True
        return self.stopped


def _orphaned(parent: int) -> None:
    """Ends the child as soon as its parent is gone: no one would read its answer."""
    while os.getppid() == parent:
        time.sleep(_CHECK_EVERY)
    os._exit(_ORPHANED)


def _main(
    conn: Connection,
    parent: int,
    nice: int,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    progress: bool,
    stoppable: bool,
) -> None:
    threading.Thread(target=_orphaned, args=(parent,), daemon=True).start()
    if nice:
        os.nice(nice)
    kwargs: dict[str, Any] = {}
    if progress:
        kwargs["on_progress"] = lambda fraction: conn.send(("progress", fraction))
    if stoppable:
        kwargs["stop"] = _StopFlag(conn)
    try:
        answer: tuple[str, Any] = ("result", func(*args, **kwargs))
    except BaseException as exc:  # every failure goes back to the parent
        answer = ("error", _portable(exc))
    with contextlib.suppress(BrokenPipeError, OSError):
        conn.send(answer)
    conn.close()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling as itself (our BadMedia, Cancelled...), else a
    RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, just made
    except Exception:  # any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


async def run(
    func: Callable[..., T],
    *args: Any,
    on_progress: Callable[[float], None] | None = None,
    stop: Flag | None = None,
    nice: int = 0,
) -> T:
    """``func(*args)`` in a spawned child process, ``nice`` steps below this one.

    ``func`` must be importable (a module-level function) and its arguments and result
    picklable. With ``on_progress``, ``func`` gets an ``on_progress`` callback whose calls are
    replayed here; with ``stop``, it gets a ``stop`` flag (``is_set()``) that turns true when
    ``stop`` is set here (a child without one runs to its end). The child exits by itself if
    this process dies. ``func``'s exception is raised here; ChildDied when the child ends
    without an answer. A caller cancelled here stops the child too.
    """
    # One socket pair: progress and the answer come this way, "stop" goes the other (no
    # semaphores: a multiprocessing Event would leave some behind when this process is killed).
    conn, child_end = _SPAWN.Pipe(duplex=True)
    process = _SPAWN.Process(
        target=_main,
        args=(
            child_end,
            os.getpid(),
            nice,
            func,
            args,
            on_progress is not None,
            stop is not None,
        ),
        name=f"clipsync-{getattr(func, '__name__', 'child')}",
        daemon=True,
    )
    process.start()
    child_end.close()  # only the child holds it now: its exit reads as EOF here
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    told = False
    loop.add_reader(conn.fileno(), readable.set)
    try:
        while True:
            if stop is not None and not told and stop.is_set():
                _tell_stop(conn)  # it stops at its next check and answers with its error
                told = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(readable.wait(), _CHECK_EVERY)
            if not readable.is_set():
                continue
            readable.clear()
            while conn.poll():
                try:
                    kind, value = conn.recv()
                except EOFError:
                    code = await asyncio.to_thread(_reap, process)
                    raise ChildDied(
                        f"the {process.name} process ended without an answer (exit code {code})"
                    ) from None
                if kind == "progress" and on_progress is not None:
                    on_progress(value)
                elif kind == "error":
                    raise value
                elif kind == "result":
                    return value  # type: ignore[no-any-return]
    finally:
        loop.remove_reader(conn.fileno())
        if not told:
            _tell_stop(conn)
        conn.close()
        if process.is_alive():
            await asyncio.shield(asyncio.to_thread(_reap, process))


def _tell_stop(conn: Connection) -> None:
    with contextlib.suppress(OSError):  # the child is gone already
        conn.send("stop")


def _reap(process: Any) -> int | None:
    """Wait for the child (it was told to stop), killing it after the grace period."""
    process.join(_EXIT_GRACE)
    if process.is_alive():
        process.kill()
        process.join()
    code: int | None = process.exitcode
    return code
