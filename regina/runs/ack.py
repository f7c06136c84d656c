"""The broker delivery a chat step came in, acknowledged by the run's finish script.

With `acks_late` the broker keeps a delivered step until the worker acknowledges it; on Redis
that is kombu's unacked index (a sorted set and a hash, both keyed by the delivery tag). Its
acknowledgement used to be a MULTI/EXEC of its own right after the finish script. The worker's
step Strategy puts the delivery here (a context variable: one per step greenlet) and the finish
script removes it in the same atomic call that ends the run: one round trip less per chat, and
no window in which a finished run's step is still redeliverable. Every other ending (steered,
stale, failed before the finish, a killed greenlet) leaves it to the broker's own ack, reject or
restore, as before.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass
class StepDelivery:
    """One delivered, unacknowledged step of run `run_id`: `tag` in the sorted set `index_key`,
    the hash `hash_key` and its queue's tag set `queue_key` (keys.unacked_of). `settled` turns
    true when the run's finish script removed all three."""

    run_id: str
    index_key: str
    hash_key: str
    tag: str
    queue_key: str
    settled: bool = False


#: The delivery of the step the current greenlet runs (None outside a step, or not a Redis broker).
CURRENT_DELIVERY: ContextVar[StepDelivery | None] = ContextVar("regina_step_delivery", default=None)
