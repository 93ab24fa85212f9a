"""Log a recurring trouble at most once per interval per message, with a count of the rest."""

from __future__ import annotations

import logging
import time


class ThrottledLog:
    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self.last: dict[str, tuple[float, int]] = {}

    def warn(self, message: str) -> None:
        now = time.monotonic()
        when, skipped = self.last.get(message, (-self.interval, 0))
        if now - when >= self.interval:
            suffix = f" ({skipped} more since last report)" if skipped else ""
            self.logger.warning("%s%s", message, suffix)
            self.last[message] = (now, 0)
        else:
            self.last[message] = (when, skipped + 1)
