"""When to tell of a repeated event (a dropped message, a failed write): the first time, then at most
once per interval, so a flood of bad messages or a full disk cannot flood the terminal. Each caller
keeps its own count and says it in its own words."""

from __future__ import annotations

import time

REPEAT_LOG_S = 30.0


class LogLimit:
    def __init__(self, every_s: float = REPEAT_LOG_S):
        self.every_s = every_s
        self._told: float | None = None

    def due(self) -> bool:
        """True for the first event and for the first one at least `every_s` after the last told."""
        now = time.monotonic()
        if self._told is None or now - self._told >= self.every_s:
            self._told = now
            return True
        return False
