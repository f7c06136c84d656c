"""RabbitMQ as the broker (`broker: amqp://…`): instance queues as AMQP queues, push consumers.

Everything broker-specific of the RabbitMQ deployment is here; `workers/transport.py` is the
Redis one. What differs, and why the rest of Regina does not notice:

- **Consuming.** A worker consumes each instance queue it holds with `basic.consume` on Celery's
  task channel (`_consume_queue` in workers/command_strategy.py, run in the consumer loop by the attach command);
  RabbitMQ pushes each step to the queue's consumer, so a step costs the same whatever the
  number of queues a worker consumes (no BRPOP, no ready list). Celery sets the prefetch limit
  channel-wide (RabbitMQ's `global` QoS): at most `concurrency` steps are delivered and not yet
  acknowledged, as on Redis; the host's per-instance FIFO runs them in delivery order. The
  member's command queue is consumed on a second channel with a prefetch of its own
  (workers/amqp_consumer.py): an attach never waits behind `concurrency` long steps.
- **Queues.** An instance queue is durable, on the default exchange (no exchange or binding per
  instance), and lives until DELETE deletes it. The web creates it with the spawn's attach: it
  declares it without waiting (`nowait`) on the channel that then publishes the attach, and
  RabbitMQ confirms the publish only after the declare before it on that channel. Creating a
  durable queue costs RabbitMQ ~2 ms (2.3 ms p50, 7.8 ms p90 at load 5): done so by as many web
  requests as run at once, not one after the other in the worker's consumer loop. A worker
  never creates one: an attach checks that the queue exists (a passive declare on a probe
  channel, the one answer the consumer loop waits for per attach) and consumes it without
  waiting; one missing fails the attach (its instance was deleted: a late attach must not make
  its queue again), and a reconnect consumes again only the queues that still exist
  (workers/amqp_consumer.py). So a step is only ever published to an existing queue: the web
  publishes after `ensure_active`, i.e. after an attach. Publishes wait for RabbitMQ's confirm
  (`confirm_publish`); steps are `mandatory`, so one to a queue missing after all comes back and
  fails its chat (`AmqpDispatcher.enqueue_step`). A member's command queue is on the default exchange too and expires
  `MEMBER_QUEUE_EXPIRES` after its worker stopped consuming it (a member id per process would
  otherwise leave one per restart).
- **Commands** (a member's queue) are transient: a request whose sender waits for the answer is
  not worth a disk write (`AmqpDispatcher.send_command`). Steps are persistent.
- **A claim whose attach never came.** On Redis the claim (a spawn's create) pushes the attach
  in the same script; here the coordinator publishes it after the claim, and one that dies in
  between (or whose publish fails, or whose transient attach a RabbitMQ restart drops) leaves the
  instance `started` on a member that never heard of it. The member's heartbeat finds such a
  claim in its held index, unattached at two beats in a row, and sends itself the attach
  (regina/cluster/unattached.py, `_attach_unattached` in workers/signals.py).
- **A dead worker's steps.** Steps are acknowledged late (`acks_late`); when a worker's
  connection closes, RabbitMQ itself puts its unacknowledged steps back, at their place in their
  queues — at once after a kill (the kernel closes the socket), after about two consumer
  heartbeats (`heartbeat_seconds`: `memberTtl`/4, so well before the re-home) for a lost
  machine. `restore_unacked` has nothing left to do. Only the consumer's connection beats: the
  worker's task-events connection has no heartbeat (`WorkerConsumer` in
  workers/amqp_consumer.py), since Celery's loop did not read it often enough and a lapse of its
  heartbeat dropped the consumer connection too, with every step in flight. Fencing is
  unchanged: a step a paused, cut-off worker still runs writes nothing once the epoch moved, and
  is rejected back to its queue (`basic.reject`, requeued at its place).
- **A queue deleted under its consumer** (DELETE while a stale owner still consumes it): RabbitMQ
  cancels the consumer. py-amqp raises `ConsumerCancelled` for a consumer without a cancel
  callback, which Celery handles as a lost connection (every step in flight requeued). The
  worker forgets the queue (`_cancelled` in workers/amqp_consumer.py), and the channel below
  drops any other cancelled consumer and logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from amqp.exceptions import NotFound
from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import pyamqp

from regina import keys
from regina.errors import Unavailable
from workers.dispatcher import CHAT_TASK, COMMAND_TASK, CeleryDispatcher, step_repr

log = logging.getLogger("regina.worker")

#: Seconds a member's command queue outlives its last consumer (RabbitMQ's `x-expires`).
MEMBER_QUEUE_EXPIRES = 600
#: Floor of the consumer's AMQP heartbeat (seconds; 0 would turn it off).
MIN_HEARTBEAT = 1


def is_amqp(url: str) -> bool:
    """True for a RabbitMQ broker URL (the `broker` setting's schemes)."""
    return url.startswith(("amqp://", "amqps://"))


def heartbeat_seconds(member_ttl: float) -> int:
    """The consumer connection's heartbeat, `memberTtl`/4 (whole seconds, at least 1). RabbitMQ
    closes a silent connection (requeueing its steps, dropping its consumers) only after about two
    missed heartbeats: at `memberTtl`/2 the close landed at or after the re-home, and the paused
    old owner's consumer still took a share of the new owner's steps (out of order)."""
    return max(MIN_HEARTBEAT, int(member_ttl / 4))


def configure_worker(conf: Any, concurrency: int, member_ttl: float) -> None:
    """Celery's connection pool for `concurrency` greenlets, the consumer's heartbeat, and a
    task-events connection without one (workers/amqp_consumer.py) that the consumer loop leaves
    alone (below)."""
    conf.broker_pool_limit = max(64, concurrency + 8)
    conf.broker_heartbeat = heartbeat_seconds(member_ttl)
    conf.worker_consumer = "workers.amqp_consumer:WorkerConsumer"
    from celery.worker import loops  # worker only: a web process never imports celery.worker

    loops.__dict__["_quick_drain"] = _leave_events_connection


def _leave_events_connection(connection: Any, timeout: float = 0.1) -> None:
    """Read nothing (in place of Celery's `_quick_drain`). Celery's gevent consumer loop reads
    the task-events connection after every turn, waiting up to 0.1 s, for its heartbeats: it has
    none here, and only publishes, each publish reading its own confirm. The loop's read delayed
    every turn (back-to-back chats took ~100 ms each at 0.1 s), and could take the confirm a
    publishing greenlet waited for, which then waited for good, nothing else coming on that
    connection: it was Celery's `worker-heartbeat` timer, holding the dispatcher's lock, and
    the consumer's next reconnect waited on that lock forever."""


#: The anonymous exchange: an instance queue's steps are published to it (routing key = the queue).
ANON = Exchange("")
#: AMQP's delivery mode of a message RabbitMQ keeps in memory only (commands).
TRANSIENT = 1


def declare_instance_queue(channel: Any, name: str, wait: bool = False) -> None:
    """Declare an instance queue, by default without waiting for RabbitMQ's answer: durable, not
    exclusive or auto-deleted, no arguments (as Celery's `Queues` makes a missing queue). A
    failing declare closes the channel: the next call waiting for an answer on it raises."""
    channel.queue_declare(queue=name, durable=True, exclusive=False, auto_delete=False, nowait=not wait)


def _returns(channel: Any) -> list[str]:
    """The routing keys of the messages RabbitMQ returned on `channel` (a pooled producer's),
    collected by a `basic.return` handler added once; without one py-amqp raises mid-wait."""
    returned: list[str] | None = getattr(channel, "_regina_returns", None)
    if returned is None:
        collected: list[str] = []
        channel.events["basic_return"].add(lambda exc, exchange, routing_key, message: collected.append(routing_key))
        channel._regina_returns = returned = collected
    return returned


def member_queue(member_id: str) -> Queue:
    """The member's command queue: default exchange (nothing to bind), expires when unused."""
    name = keys.member_queue(member_id)
    return Queue(name, Exchange(""), routing_key=name, expires=MEMBER_QUEUE_EXPIRES)


class Channel(pyamqp.Channel):
    """kombu's AMQP channel, tolerating a consumer RabbitMQ cancelled (its queue was deleted)."""

    def _on_basic_cancel(self, consumer_tag: str) -> None:
        callback = cast(Any, self)._remove_tag(consumer_tag)
        if callback:
            callback(consumer_tag)
            return
        log.warning("broker cancelled consumer %s (its queue was deleted); dropped", consumer_tag)


class Connection(pyamqp.Connection):
    """py-amqp's connection with the channel above."""

    Channel = Channel


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport with the channel above (`celeryconfig.broker_transport`)."""

    Connection = Connection


class AmqpDispatcher(CeleryDispatcher):
    """The Dispatcher on RabbitMQ: publishing as on Redis (anonymous exchange, no declare);
    unacknowledged steps are RabbitMQ's to requeue; DELETE deletes the queue."""

    def step_message(self, instance_id: str, run_id: str, message: str | None, stream: bool = True) -> str | None:
        """None: steps reach RabbitMQ through its own client (`enqueue_step`)."""
        return None

    def enqueue_step(self, instance_id: str, run_id: str, message: str | None, stream: bool = True) -> None:
        """Publish a step `mandatory`: RabbitMQ drops a message no queue takes and confirms it all
        the same, so a step to a missing queue (deleted meanwhile) was lost silently and its run
        ended "lost" minutes later. A returned step raises here instead (RabbitMQ sends the return
        before the confirm the publish waits for); the caller ends the run with the error."""
        queue = keys.instance_queue(instance_id)
        with self.app.producer_or_acquire() as producer:
            returned = _returns(producer.channel)
            returned.clear()
            args = [instance_id, run_id, message, stream]
            self._send(CHAT_TASK, queue, args, step_repr(instance_id, run_id, message), producer, mandatory=True)
            if returned:
                returned.clear()
                raise Unavailable(f"instance {instance_id!r} has no queue on RabbitMQ: its step was not queued")

    def send_command(self, member_id: str, command: str, payload: dict[str, Any], token: str | None) -> None:
        """Publish a command, transient; a spawn's attach creates the instance's queue first, on
        the same channel: the publish's confirm comes after the declare (see the module's doc).

        A command is a request its sender waits for (up to workerReplyTimeout), not work to keep
        across a RabbitMQ restart, after which nobody waits for its answer: a persistent message
        is written to RabbitMQ's message store and confirmed after its fsync (0.4 ms of
        RabbitMQ's CPU and 1.3 ms p50 per command, against 0.07 and 0.19 transient)."""
        with self.app.producer_or_acquire() as producer:
            if command == "attach" and payload.get("spawnOf"):
                declare_instance_queue(producer.channel, keys.instance_queue(payload["instanceId"]))
            self._send(
                COMMAND_TASK,
                keys.member_queue(member_id),
                [command, payload, token],
                f"(command={command!r}, instance={payload.get('instanceId')!r})",
                producer,
                delivery_mode=TRANSIENT,
            )

    def command_message(self, member_id: str, command: str, payload: dict[str, Any], token: str | None) -> str | None:
        """None: commands reach RabbitMQ through its own client (`send_command`)."""
        return None

    def restore_unacked(self, instance_id: str) -> int:
        """Nothing to move: RabbitMQ requeued the steps when the dead worker's connection closed."""
        return 0

    def waiting_instances(self, instance_ids: Iterable[str]) -> set[str]:
        """Instances with steps ready on their queues. Only instances with an unfinished run can
        have one, so only their queues are asked (one passive declare each)."""
        ids = list(instance_ids)
        if not ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for iid in ids:
            pipe.zcard(keys.instance_runs(iid))
        busy = [iid for iid, n in zip(ids, pipe.execute(), strict=True) if n]
        return {iid for iid in busy if self._ready_count(keys.instance_queue(iid))}

    def _ready_count(self, queue: str) -> int:
        with self._channel() as channel:
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except NotFound:
                return 0  # never attached, or deleted (the failed declare closed the channel)

    def purge(self, instance_id: str) -> None:
        """Delete the instance queue with the steps still on it."""
        with self._channel() as channel:
            channel.queue_delete(queue=keys.instance_queue(instance_id))

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        """A channel of its own on a pooled connection (an error closes only that channel)."""
        pool: Any = self.app.pool
        with pool.acquire(block=True) as conn:
            channel = conn.channel()
            try:
                yield channel
            finally:
                if channel.is_open:
                    channel.close()


def make_dispatcher(app: Celery, client: redis.Redis) -> CeleryDispatcher:
    """The Dispatcher for the app's broker: RabbitMQ's for an amqp:// URL, else Redis's."""
    if is_amqp(str(app.conf.broker_url or "")):
        return AmqpDispatcher(app, client)
    return CeleryDispatcher(app, client)


__all__ = ["AmqpDispatcher", "Transport", "make_dispatcher"]
