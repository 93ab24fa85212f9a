"""Functions tests/test_child.py runs in child processes (a spawned child imports them)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.errors import BadMedia


class Halted(Exception):
    """What a stopped function raises (the way ladder.Cancelled does)."""


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("cannot travel")
        self.hook = lambda: None  # a lambda does not pickle


def report(n: int, on_progress: Callable[[float], None]) -> tuple[int, int]:
    for i in range(1, n + 1):
        on_progress(i / n)
    return os.getpid(), os.nice(0)


def bad_media(message: str) -> None:
    raise BadMedia(message)


def unpicklable() -> None:
    raise Unpicklable


def exit_with(code: int) -> None:
    os._exit(code)


def until_stopped(pid_file: str, stop: Any) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while not stop.is_set():
        time.sleep(0.01)
    raise Halted("stopped")


def forever(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    while True:
        time.sleep(0.1)
