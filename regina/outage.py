"""How a background loop reports Redis being down: one line, not a traceback per retry.

A loop that retries every second or heartbeat otherwise fills the log while Redis is down
(tracebacks of 50 lines, several a second), burying the one line that matters.
"""

from __future__ import annotations

import logging
import time

import redis

#: Seconds between "still unreachable" lines of one loop.
REPEAT = 30.0
#: The longest wait between a loop's attempts while Redis is down.
MAX_DELAY = 10.0


class Outage:
    """One loop's view of Redis being unreachable: a WARNING when it starts, one every REPEAT
    seconds while it lasts, an INFO when it ends, and a growing wait between attempts."""

    def __init__(self, what: str, log: logging.Logger, then: str = "retrying") -> None:
        self.what = what
        self.log = log
        self.then = then
        """What happens meanwhile, for the WARNING line."""
        self.quiet = 0
        """Failures since the last line."""
        self.failures = 0
        self.logged_at = 0.0

    def failed(self, exc: BaseException) -> None:
        """Note a failure: a Redis connection error is one line (now and then), anything else a
        traceback (a bug, not an outage)."""
        self.failures += 1
        if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            self.log.error("%s failed; %s", self.what, self.then, exc_info=exc)
            return
        now = time.monotonic()
        if self.failures == 1 or now - self.logged_at >= REPEAT:
            self.logged_at = now
            since = f" ({self.quiet} more failures since the last line)" if self.quiet else ""
            self.quiet = 0
            self.log.warning("%s: Redis is unreachable (%s); %s%s", self.what, exc, self.then, since)
        else:
            self.quiet += 1

    def ok(self) -> None:
        """Note a success: say that Redis is back if it was not."""
        if self.failures and self.logged_at:
            self.log.info("%s: Redis is reachable again", self.what)
        self.failures = 0
        self.logged_at = 0.0
        self.quiet = 0

    def delay(self, base: float = 1.0) -> float:
        """Seconds to wait before the next attempt: `base` doubled per failure, up to MAX_DELAY."""
        return float(min(base * 2 ** max(self.failures - 1, 0), max(MAX_DELAY, base)))
