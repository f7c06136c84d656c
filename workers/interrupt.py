"""How a cancel interrupts a chat step blocked on the gevent hub (a model call, a tool's I/O).

The step's greenlet gets `RunCancelled` thrown in from the hub (as `gevent.kill` does), so the
HTTP stream to the provider is closed by the unwinding `with` blocks. A throw scheduled after
the stretch ended is dropped (`close`): the loop then stops at its next check.
"""

from __future__ import annotations

import gevent
from gevent import getcurrent

from regina.runtime.sink import RunCancelled


class GreenletInterrupter:
    """Throw `RunCancelled` into the greenlet that created this, while its stretch lasts."""

    def __init__(self) -> None:
        self.greenlet = getcurrent()
        self.closed = False

    def __call__(self) -> None:
        gevent.get_hub().loop.run_callback(self._throw)

    def _throw(self) -> None:
        if not self.closed and not self.greenlet.dead:
            self.greenlet.throw(RunCancelled("cancelled", "the run was cancelled"))

    def close(self) -> None:
        """The stretch is over."""
        self.closed = True


def greenlet_interrupter() -> GreenletInterrupter:
    """The InstanceHost's interrupter factory in a gevent worker."""
    return GreenletInterrupter()
