"""A first-come-first-served lock: an instance's chat steps run one at a time, in arrival order."""

from __future__ import annotations

import threading


class FifoLock:
    """Ticket lock on a Condition (cooperative under gevent's monkey-patched threading)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def acquire(self) -> None:
        """Wait for this caller's turn."""
        with self._cond:
            ticket = self._next
            self._next += 1
            while self._serving != ticket:
                self._cond.wait()

    def release(self) -> None:
        """Let the next caller in."""
        with self._cond:
            self._serving += 1
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """How many callers wait for their turn (not counting the holder)."""
        return max(0, self._next - self._serving - 1)

    @property
    def busy(self) -> bool:
        """True while someone holds or waits for the lock."""
        return self._next != self._serving

    def __enter__(self) -> FifoLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
