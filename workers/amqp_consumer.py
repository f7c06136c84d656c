"""RabbitMQ in the worker's consumer: the member's command queue on a channel of its own.

Celery consumes every queue of a worker on one channel, under one channel-wide prefetch limit
(RabbitMQ's `global` QoS: `concurrency` steps delivered and not acknowledged, workers/amqp.py).
Commands shared it: with `concurrency` long steps running, RabbitMQ delivered no attach, suspend
or delete until one of them ended, and a spawn placed on that worker failed with a 503 after
workerReplyTimeout. The member's command queue is consumed here instead, on a second channel of
the same connection with a prefetch of its own; instance queues stay on Celery's task channel
and keep its limit. Commands still reach `command_strategy` through Celery's task handler.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from kombu import Consumer

from workers.amqp import is_amqp, member_queue
from workers.context import context

#: Commands delivered to a worker and not yet handled, at most: each is acknowledged as its
#: handling starts (workers/command_strategy.py), so this only bounds a burst held in memory.
COMMAND_PREFETCH = 200


class CommandChannel(bootsteps.ConsumerStep):
    """Consume the member's command queue on a channel of its own (RabbitMQ only); started after
    Celery's task consumer (its task handler and strategies), again after every reconnect."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def include_if(self, parent: Any) -> bool:
        """Only on RabbitMQ: on Redis a member's commands are read through its ready list."""
        return is_amqp(str(parent.app.conf.broker_url or ""))

    def start(self, c: Any) -> None:
        """Open the channel, set its own prefetch (per consumer) and consume the command queue."""
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


def install(app: Any) -> None:
    """Add the step to the app's worker consumer (before a worker builds its consumer)."""
    app.steps["consumer"].add(CommandChannel)
