"""RabbitMQ in the worker's consumer: which queues it consumes, on which channel, after a reconnect.

**Commands on a channel of their own.** Celery consumes every queue of a worker on one channel,
under one channel-wide prefetch limit (RabbitMQ's `global` QoS: `concurrency` steps delivered
and not acknowledged, workers/amqp.py). Commands shared it: with `concurrency` long steps
running, RabbitMQ delivered no attach, suspend or delete until one of them ended, and a spawn
placed on that worker failed with a 503 after workerReplyTimeout. The member's command queue is
consumed here instead, on a second channel of the same connection with a prefetch of its own;
instance queues stay on Celery's task channel and keep its limit. Commands still reach
`command_strategy` through Celery's task handler.

**Instance queues are never created here.** The web creates a queue with its instance's spawn
(`AmqpDispatcher.send_command`); the worker only checks that it exists (a passive declare on a
probe channel) and consumes it. Celery's own list of queues (`app.amqp.queues`) is declared
again, actively, at every reconnect, so a worker that had consumed the queue of an instance
deleted meanwhile (while it was cut off from RabbitMQ, or under a consumer RabbitMQ then
cancelled) created it again, empty and for good; a late attach (one that arrives after its
instance was deleted) did too. Instance queues are kept out of that list: this module keeps the
worker's own (`consumed`), drops a queue from it when its consumer is cancelled (by the worker
or by RabbitMQ), and after a reconnect consumes again those that still exist.

A queue found missing for an instance this member still holds (at the attach's epoch, not being
deleted) was deleted behind Regina's back: it is created again, as the attach did before.

**Heartbeats on the consumer's connection only** (`WorkerConsumer`): Celery's gevent loop does not
read the task-events connection often enough to keep a heartbeat on it, so it has none.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import kombu
from amqp.exceptions import NotFound
from celery import bootsteps
from celery.worker import consumer as celery_consumer
from kombu import Consumer, Queue

from regina import keys
from workers.amqp import ANON, declare_instance_queue, is_amqp, member_queue
from workers.context import context

log = logging.getLogger("regina.worker")

#: Commands delivered to a worker and not yet handled, at most: each is acknowledged as its
#: handling starts (workers/command_strategy.py), so this only bounds a burst held in memory.
COMMAND_PREFETCH = 200


def consumed(c: Any) -> set[str]:
    """The instance queues the worker consumes (Celery's consumer `c`): what a reconnect consumes
    again, in place of Celery's list."""
    queues: set[str] | None = getattr(c, "regina_instance_queues", None)
    if queues is None:
        c.regina_instance_queues = queues = set()
    return queues


def _probe(c: Any) -> Any:
    """A channel of the consumer's connection for passive declares (a 404 closes it, not the
    task channel); made again after one closed it."""
    conn = c.task_consumer.channel.connection
    channel = getattr(conn, "regina_probe", None)
    if channel is None or not channel.is_open:
        channel = conn.regina_probe = conn.channel()
    return channel


def queue_exists(c: Any, name: str) -> bool:
    """Whether the queue exists on RabbitMQ (one answer waited for, in the consumer loop)."""
    try:
        _probe(c).queue_declare(queue=name, passive=True)
    except NotFound:
        return False
    return True


def ensure_queue(c: Any, instance_id: str, epoch: int | None = None) -> bool:
    """Whether the instance's queue exists, for an attach (at `epoch`) or a reconnect: a missing
    one is created again only for an instance this member holds (at `epoch`) that is not being
    deleted: it was deleted behind Regina's back. The queue of a deleted instance stays deleted."""
    name = keys.instance_queue(instance_id)
    if queue_exists(c, name):
        return True
    ctx = context()
    if not ctx.host.store.is_held_by(instance_id, ctx.member_id, epoch):
        return False
    log.warning("instance %s: its queue was missing on RabbitMQ (deleted behind Regina's back?); made again", name)
    # Waited for: a consume on the task channel must not overtake it (two channels, no order).
    declare_instance_queue(_probe(c), name, wait=True)
    return True


def consume_instance_queue(c: Any, name: str) -> None:
    """Consume an existing instance queue on Celery's task channel, neither declaring it nor
    waiting for RabbitMQ's answer; a consumer RabbitMQ cancels (its queue deleted) is dropped."""
    cset = c.task_consumer
    consumed(c).add(name)
    if cset.consuming_from(name):
        return
    # The anonymous exchange: no exchange or binding per instance (the publisher uses it too).
    bound = Queue(name, ANON, routing_key=name)(cset.channel)
    cset._queues[name] = bound
    tag = cset._basic_consume(bound, no_ack=cset.no_ack, nowait=True)
    cset.channel.cancel_callbacks[tag] = functools.partial(_cancelled, c, cset, name, tag)


def release_instance_queue(c: Any, name: str) -> None:
    """Stop consuming an instance queue (waits for RabbitMQ's answer) and forget it."""
    consumed(c).discard(name)
    c.task_consumer.cancel_by_queue(name)


def _cancelled(c: Any, cset: Any, name: str, tag: str, _consumer_tag: str) -> None:
    """RabbitMQ cancelled a consumer of an instance queue (the queue was deleted: a DELETE, with
    this member a stale owner still consuming it): forget the queue, or a reconnect would
    consume it again."""
    if cset._active_tags.get(name) == tag:
        cset._active_tags.pop(name, None)
        cset._queues.pop(name, None)
        if c.task_consumer is cset:
            consumed(c).discard(name)
    log.warning("RabbitMQ cancelled the consumer of %s (its queue was deleted); no longer consumed", name)


class AmqpConsumers(bootsteps.ConsumerStep):
    """After Celery's task consumer (re)started, on RabbitMQ: the instance queues consumed before
    (those still there), then the member's command queue on a channel of its own."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def include_if(self, parent: Any) -> bool:
        """Only on RabbitMQ: on Redis a member's queues are read through its ready list."""
        return is_amqp(str(parent.app.conf.broker_url or ""))

    def start(self, c: Any) -> None:
        """Consume the instance queues again, then the command queue. In this order: a command
        handled while the queues are checked would wait on the probe channel too."""
        _consume_again(c)
        channel = c.connection.channel()
        channel.basic_qos(0, COMMAND_PREFETCH, False)
        consumer = Consumer(
            channel,
            queues=[member_queue(context().member_id)],
            on_message=c.create_task_handler(),
            accept=c.app.conf.accept_content,
        )
        self.consumers = [consumer]
        consumer.consume()


def _consume_again(c: Any) -> None:
    """After a reconnect: consume again the instance queues the worker consumed, those that still
    exist (none on the first start). All are checked before any is consumed: no step arrives
    while a check waits for its answer."""
    queues = consumed(c)
    if not queues:
        return
    kept = [name for name in sorted(queues) if ensure_queue(c, name.removeprefix(keys.instance_queue("")))]
    gone = len(queues) - len(kept)
    queues.intersection_update(kept)
    # Steps arrive from here on, before Celery's loop starts and sets the same handler.
    c.task_consumer.on_message = c.create_task_handler()
    for name in kept:
        consume_instance_queue(c, name)
    log.warning("reconnected: %d instance queue(s) consumed again, %d deleted meanwhile", len(kept), gone)


class WorkerConsumer(celery_consumer.Consumer):
    """Celery's worker consumer whose task-events connection has no AMQP heartbeat
    (`worker_consumer` on RabbitMQ, workers/amqp.py)."""

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> kombu.Connection:
        """The task-events connection (Celery's `Events` step is this method's one caller), without
        heartbeats. Celery gives it the consumer's heartbeat but reads it only when the consumer
        connection's `drain_events` returns, which py-amqp's does not on a heartbeat frame: an idle
        worker with a heartbeat of 4 s or less (RabbitMQ beats every 2 s or less) never read it,
        only the 2 s `worker-heartbeat` publishes kept it alive, and at 1 s (memberTtl under 8 s)
        one a little late lapsed it: Celery dropped the consumer connection, every step in flight
        requeued. It only publishes: the consumer's heartbeat finds a lost broker or machine (its
        reconnect opens this connection again), a publish on a lost path fails within py-amqp's
        1 s TCP_USER_TIMEOUT, and one RabbitMQ closes alone is reopened by the next
        `worker-heartbeat` publish (sent with kombu's `ensure`)."""
        return super().connection_for_write(url, heartbeat=0)


def install(app: Any) -> None:
    """Add the step to the app's worker consumer (before a worker builds its consumer)."""
    app.steps["consumer"].add(AmqpConsumers)
