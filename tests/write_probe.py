"""Stream a large generated object into storage and report the writer's memory.

Run as its own process so its peak RSS is the write's alone:
``python -m tests.write_probe PATH MEGABYTES`` with the storage in CLIPSYNC_STORAGE__* variables.
Prints one JSON line: baseline and peak RSS (MiB), bytes written, seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator

from backends.blocking import BlockingRunner
from backends.storage import open_storage
from conf import load

CHUNK = 1 << 20


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    # Linux: "5" resets the peak RSS (VmHWM) to the current RSS, so the peak is the write's.
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


async def _chunks(megabytes: int) -> AsyncIterator[bytes]:
    block = os.urandom(CHUNK)
    for i in range(megabytes):
        # A fresh object each time, as from a network stream (the first 8 bytes differ).
        yield i.to_bytes(8, "big") + block[8:]


async def main(path: str, megabytes: int) -> dict[str, float]:
    settings = load()
    storage = open_storage(settings.storage, BlockingRunner(4))
    try:
        await storage.write(f"{path}.warmup", _chunks(1))  # connect, import lazily loaded SDKs
        await storage.delete(f"{path}.warmup")
        _reset_peak()
        baseline = _status_mib("VmRSS")
        started = time.monotonic()
        info = await storage.write(path, _chunks(megabytes))
        seconds = time.monotonic() - started
        return {
            "baseline_mib": baseline,
            "peak_mib": _status_mib("VmHWM"),
            "size": info.size,
            "seconds": seconds,
        }
    finally:
        await storage.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))))
