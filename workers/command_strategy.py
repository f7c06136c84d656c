"""Member commands (attach, suspend, delete, release, messages), handled inside the consumer loop.

Celery's `add_consumer`/`cancel_consumer` broadcasts reply before the change takes effect (up
to 2 s on an idle gevent worker, and tasks published right after a cancel still reach the old
worker). A custom task Strategy runs in the consumer's own loop, so `add_task_queue` /
`cancel_task_queue` take effect before the next fetch: a confirmed attach and a leak-free
detach (measured in ../shared/FINDINGS-celery.md). This relies on Celery internals
(`Task.Strategy`, the handler signature, `Consumer.add_task_queue`), hence the pinned Celery
minor version and the tests that exercise every command.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import gevent

from regina import keys
from regina.host import NotHere
from workers.amqp import AmqpDispatcher
from workers.amqp import Channel as AmqpChannel
from workers.amqp_consumer import consume_instance_queue, ensure_queue, release_instance_queue
from workers.context import WorkerContext, context
from workers.transport import Channel, fresh_queue

log = logging.getLogger("regina.worker")


def _answer(
    ctx: WorkerContext, token: str | None, fn: Callable[[], dict[str, Any] | list[Any]], answers: bool = False
) -> None:
    """Run a command and answer it; `answers`: `fn` answers itself when it succeeds."""
    try:
        result = fn()
    except Exception as exc:
        log.warning("command failed: %s", exc, exc_info=not hasattr(exc, "message"))
        ctx.reply(token, {"ok": False, "error": getattr(exc, "message", None) or repr(exc)})
        return
    if not answers:
        ctx.reply(token, {"ok": True, "data": result})


def _on_rabbitmq(consumer: Any) -> bool:
    return isinstance(consumer.task_consumer.channel, AmqpChannel)


def _release_queue(consumer: Any, queue: str) -> None:
    """Stop consuming a queue and forget it (Celery keeps every queue ever added otherwise)."""
    if _on_rabbitmq(consumer):
        release_instance_queue(consumer, queue)
        return
    consumer.cancel_task_queue(queue)
    consumer.app.amqp.queues.pop(queue, None)


def _consume_queue(consumer: Any, queue: str) -> None:
    """Celery's `Consumer.add_task_queue` without its O(queues) part: after adding a queue it
    calls kombu's `consume()`, which walks every queue the worker consumes (a spawn cost 30 ms at
    10 000 attached instances, docs/benchmarks.md); this starts consuming the one queue added,
    without declaring it on Redis. On RabbitMQ: the queue, checked to exist by the caller
    (`ensure_queue`), is consumed without a declare (workers/amqp_consumer.py)."""
    if _on_rabbitmq(consumer):
        consume_instance_queue(consumer, queue)
        return
    cset = consumer.task_consumer
    queues = consumer.app.amqp.queues
    if queue in queues:  # `in`, not a lookup: the mapping creates missing queues (Celery #1079)
        q = queues.select_add(queues[queue])
    else:
        q = queues.select_add(queue, exchange="", exchange_type="direct", routing_key=queue)
    if isinstance(cset.channel, Channel):
        # On Redis a queue is a list: declaring it was an LLEN and binding it to Celery's default
        # exchange an SADD that nothing reads (steps go through the anonymous exchange), two
        # MULTIs per attach.
        q.no_declare = True
    if not cset.consuming_from(queue):
        cset._basic_consume(cset.add_queue(q), no_ack=cset.no_ack, nowait=False)


def command_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., None]:
    """Build the handler Celery calls for every `regina.command` message this worker receives.

    Commands run one after the other, in arrival order, never one inside another. On RabbitMQ,
    suspend, delete and release wait for the broker's answer (basic.cancel-ok) inside the
    consumer loop, and py-amqp delivers the messages that arrive meanwhile from inside that
    wait; a command handled there waits for an answer of its own, the two waits take each
    other's answers and one waits for good (measured: 2 of a burst of 16 attaches answered). A
    command that arrives while another is handled is queued and handled right after it.
    """
    waiting: deque[tuple[Any, Any]] = deque()

    def handle(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> None:
        waiting.append((message, body))
        if len(waiting) > 1:
            return  # called from inside the handling of an earlier command: it takes this one
        while waiting:
            try:
                _handle_command(consumer, *waiting[0])
            except Exception:  # one bad command must not strand the ones queued behind it
                log.exception("command failed in the consumer loop")
            finally:
                waiting.popleft()

    return handle


def _handle_command(consumer: Any, message: Any, body: Any) -> None:
    """Run one command: queue changes here in the consumer loop, the rest in a greenlet."""
    args, _kwargs, _embed = body if body is not None else message.decode()
    name, payload, token = args
    message.ack()
    ctx = context()
    host = ctx.host
    iid = payload.get("instanceId", "")
    queue = keys.instance_queue(iid)
    if name == "attach":
        _attach(ctx, consumer, iid, payload, token)
    elif name == "suspend":
        _release_queue(consumer, queue)
        gevent.spawn(_answer, ctx, token, functools.partial(_suspend, ctx, iid, payload.get("epoch")))
    elif name == "consume":
        # An instance a failed suspend left here: its steps are taken again (kicked: those that
        # waited meanwhile too).
        act = host.active.get(iid)
        if act is not None and (not _on_rabbitmq(consumer) or ensure_queue(consumer, iid, act.epoch)):
            _consume_queue(consumer, queue)
        ctx.reply(token, {"ok": True, "data": {}})
    elif name == "delete":
        _release_queue(consumer, queue)
        gevent.spawn(_answer, ctx, token, lambda: host.delete(iid))
    elif name == "release":
        # An instance another owner holds now (seen by a fenced write or the heartbeat check):
        # stop consuming its queue at once, unless it was attached here again meanwhile.
        answer = host.release(iid, payload.get("epoch"))
        if iid not in host.active and iid not in host.loading:
            _release_queue(consumer, queue)
        ctx.reply(token, {"ok": True, "data": answer})
    elif name == "messages":
        gevent.spawn(_answer, ctx, token, lambda: host.messages(iid))
    else:
        ctx.reply(token, {"ok": False, "error": f"unknown command {name!r}"})


def _attach(ctx: WorkerContext, consumer: Any, iid: str, payload: dict[str, Any], token: str | None) -> None:
    """Consume the instance's queue now (steps queued while its VFS is restored wait on its
    lock), attach it in a greenlet; a failed attach stops consuming it again."""
    host = ctx.host
    queue = keys.instance_queue(iid)
    spawn_of = payload.get("spawnOf")  # the definition of an instance being spawned

    def attach() -> dict[str, Any]:
        try:
            return host.attach(iid, int(payload["epoch"]), spawn_of, reply_to=token)
        except Exception:
            # Stop consuming through the consumer loop: this greenlet must not use the
            # consumer's connection (on RabbitMQ a cancel waits for the broker's answer).
            ctx.dispatcher.send_command(ctx.member_id, "release", {"instanceId": iid}, None)
            _purge_if_deleted(ctx, iid)
            raise

    if _on_rabbitmq(consumer) and not ensure_queue(consumer, iid, int(payload["epoch"])):
        # A late attach: its instance was deleted meanwhile (a spawn its coordinator gave up on,
        # too). Consumed, the missing queue would close the task channel; declared, the deleted
        # instance's queue would be made again, for good.
        gevent.spawn(_answer, ctx, token, functools.partial(_no_queue, iid))
        return
    if spawn_of is None and iid not in host.active and iid not in host.loading:
        _restore_taken(ctx, iid)
    host.begin_attach(iid)
    # The anonymous exchange (as the publisher uses): no exchange or binding to declare,
    # so nothing per queue accumulates in Redis or in kombu's in-memory state.
    with fresh_queue(queue) if spawn_of else nullcontext():
        _consume_queue(consumer, queue)
    gevent.spawn(_answer, ctx, token, attach, True)  # the attach's last write answers


def _no_queue(iid: str) -> dict[str, Any]:
    raise NotHere(f"instance {iid!r} has no queue on RabbitMQ: it was deleted; not attached")


def _purge_if_deleted(ctx: WorkerContext, iid: str) -> None:
    """RabbitMQ: delete the queue of an instance deleted while it was attached here. A spawn's
    publish (the member's own for a claim whose attach never came, regina/cluster/unattached.py)
    that read the record before a DELETE made the queue again after the DELETE's purge."""
    if not isinstance(ctx.dispatcher, AmqpDispatcher) or ctx.client.exists(keys.instance_record(iid)):
        return
    try:
        ctx.dispatcher.purge(iid)
    except Exception:  # noqa: BLE001 - the attach's own error is what the caller hears
        log.warning("instance %s: deleted while attaching; its queue not deleted", iid, exc_info=True)


def _restore_taken(ctx: WorkerContext, iid: str) -> None:
    """Requeue the steps a dead owner took and did not acknowledge, before the queue is consumed
    here: the failover's coordinator does so after its claim, but may have died since (the claim
    pushed this attach). A step moves once, whoever moves it (workers/dispatcher.py)."""
    try:
        moved = ctx.dispatcher.restore_unacked(iid)
    except Exception:  # noqa: BLE001 - the coordinator's restore, or the next attach, moves them
        log.warning("instance %s: taken steps not restored at attach", iid, exc_info=True)
        return
    if moved:
        log.warning("instance %s: %d step(s) a previous owner had taken requeued at attach", iid, moved)


def _suspend(ctx: WorkerContext, iid: str, epoch: int | None) -> dict[str, Any]:
    """Suspend (its queue already released); one that failed (its backup) leaves the instance
    here, and its queue is read again."""
    try:
        return ctx.host.suspend(iid, epoch)
    except Exception:
        if iid in ctx.host.active:
            ctx.dispatcher.send_command(ctx.member_id, "consume", {"instanceId": iid}, None)
        raise
