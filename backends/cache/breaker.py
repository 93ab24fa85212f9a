"""A circuit breaker, so requests stop waiting on a Redis that is down or hung.

Closed: calls go through. After ``threshold`` consecutive failures it opens: calls are refused at
once for ``cooldown`` seconds. Then one probe call is let through (half-open); its success
closes the breaker, its failure opens it for another cooldown. Written here rather than taken
from a library: the asyncio ones are unmaintained, and the whole state machine is these lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.trips = 0

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at < self.cooldown:
            return "open"
        return "half-open"

    def allow(self) -> bool:
        """Whether a call may be made now; in half-open state only one probe at a time."""
        if self._opened_at is None:
            return True
        if self._probing or self._clock() - self._opened_at < self.cooldown:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            if self._opened_at is None or self._probing:
                self.trips += 1
            self._opened_at = self._clock()
            self._probing = False

    def release(self) -> None:
        """A call let through ended with neither verdict (e.g. cancelled): let another probe."""
        self._probing = False
