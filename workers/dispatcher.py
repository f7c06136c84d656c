"""The core's Dispatcher implemented with Celery and kombu's Redis transport."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from typing import Any, cast
from uuid import uuid4

import redis
from celery import Celery
from celery._state import get_current_task
from kombu import Exchange, Queue
from kombu.utils.json import dumps as kombu_dumps

from regina import keys
from regina.redis_conn import script
from workers.transport import captured_publishes, notify_owner

_ANON = Exchange("")  # the anonymous exchange: routing key = list name, no bindings needed
CHAT_TASK = "regina.chat"
COMMAND_TASK = "regina.command"
#: celeryconfig's broker_transport for Redis (workers/transport.py).
TRANSPORT = "workers.transport:Transport"

# kombu's Redis transport keeps delivered-but-unacknowledged messages here (acks_late).
_UNACKED = "unacked"
_UNACKED_INDEX = "unacked_index"

# KEYS: unacked hash, unacked index, instance queue, the queue's tag set. ARGV: tag, message.
# Moves one taken step back to the head of its queue, once: of two restorers (a web's failover,
# a worker's attach, a restarted worker's own), the one whose HDEL removed the entry pushes it.
_RESTORE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""


def _short(text: str | None, limit: int = 60) -> str:
    if text is None:
        return "None"
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def step_repr(instance_id: str, run_id: str, message: str | None) -> str:
    """A chat step's `argsrepr` (what Flower shows)."""
    return f"(instance={instance_id!r}, run={run_id!r}, message={_short(message)})"


class _Envelope:
    """A chat step's message as Celery built it once in this process (`template`, a decoded
    message), as JSON text split around the strings that differ from step to step: `parts`
    joined with the JSON of each slot named in `order` is what kombu would push."""

    _SLOTS = ("body", "id", "argsrepr", "reply_to", "queue", "tag")

    def __init__(self, pid: int, template: dict[str, Any]) -> None:
        self.pid = pid
        #: The task's options (callbacks, errbacks, chain, chord): the body's third element.
        self.embed = json.loads(base64.b64decode(template["body"]))[2]
        mark = {name: f"\x00{name}\x00" for name in self._SLOTS}
        msg = {
            **template,
            "body": mark["body"],
            "headers": {**template["headers"], "id": mark["id"], "root_id": mark["id"], "argsrepr": mark["argsrepr"]},
            "properties": {
                **template["properties"],
                "correlation_id": mark["id"],
                "reply_to": mark["reply_to"],
                "argsrepr": mark["argsrepr"],
                "delivery_info": {**template["properties"]["delivery_info"], "routing_key": mark["queue"]},
                "delivery_tag": mark["tag"],
            },
        }
        text = str(kombu_dumps(msg))
        by_json = {json.dumps(m): name for name, m in mark.items()}
        pieces = re.split("(" + "|".join(re.escape(j) for j in by_json) + ")", text)
        self.parts: list[str] = pieces[0::2]
        self.order: list[str] = [by_json[j] for j in pieces[1::2]]


class CeleryDispatcher:
    """Publish steps and commands straight to their queues (anonymous exchange, no declare)."""

    def __init__(self, app: Celery, client: redis.Redis) -> None:
        self.app = app
        self.r = client
        #: A chat step's message as Celery built it in this process, for `step_message`.
        self._envelope: _Envelope | None = None

    def _send(
        self, task: str, queue: str, args: list[Any], argsrepr: str, producer: Any = None, **options: Any
    ) -> None:
        # exchange="" + routing_key=queue makes kombu LPUSH onto the queue's list directly;
        # declare=[] skips re-declaring per publish (0.4 ms instead of 1-3.5 ms).
        target = Queue(queue, exchange=_ANON, routing_key=queue, no_declare=True)
        self.app.send_task(
            task,
            args=args,
            queue=target,  # type: ignore[arg-type]
            declare=[],
            argsrepr=argsrepr,
            producer=producer,
            **options,
        )

    def enqueue_step(self, instance_id: str, run_id: str, message: str | None, stream: bool = True) -> None:
        """Queue a chat step on the instance's own queue."""
        self._send(
            CHAT_TASK,
            keys.instance_queue(instance_id),
            [instance_id, run_id, message, stream],
            step_repr(instance_id, run_id, message),
        )

    def step_message(self, instance_id: str, run_id: str, message: str | None, stream: bool = True) -> str | None:
        """The step's message as kombu would push it, for the chat's open script (None when the
        broker is not on this module's Redis transport, e.g. rediss://: publish as usual)."""
        if self.app.conf.broker_transport != TRANSPORT:
            return None
        if get_current_task() is None:  # no parent task: the message differs from the last in ids only
            return self._filled(instance_id, run_id, message, stream)
        return self._captured(instance_id, run_id, message, stream)

    def _captured(self, instance_id: str, run_id: str, message: str | None, stream: bool) -> str:
        with captured_publishes() as out:
            self.enqueue_step(instance_id, run_id, message, stream)
        if len(out) != 1:  # cannot happen on this transport: it would have been sent for real
            raise RuntimeError(f"step publish not captured for run {run_id} (got {len(out)})")
        if not run_id:  # the template of `_filled`
            return out[0][1]
        msg = json.loads(out[0][1])
        msg["properties"]["delivery_tag"] = run_id  # as `_filled` does
        return str(kombu_dumps(msg))

    def _filled(self, instance_id: str, run_id: str, message: str | None, stream: bool) -> str:
        """Celery's message for a chat step, from one Celery built in this process: its fields in
        the same order, the new task id, arguments, queue and delivery tag. Celery's `send_task`
        (message headers, producer, routing, options) cost ≈ 0.23 ms of the web's CPU per chat;
        this ≈ 0.01 ms: the message's JSON is split once around its varying strings (`_Envelope`)
        and joined with them. Only outside a task: inside one, Celery fills in the parent and
        root ids."""
        pid = os.getpid()
        if self._envelope is None or self._envelope.pid != pid:
            self._envelope = _Envelope(pid, json.loads(self._captured("", "", None, True)))
        env = self._envelope
        task_id = str(uuid4())
        argsrepr = json.dumps(step_repr(instance_id, run_id, message))
        body = json.dumps([[instance_id, run_id, message, stream], {}, env.embed])
        slots = {
            "body": f'"{base64.b64encode(body.encode()).decode()}"',
            "id": f'"{task_id}"',
            "argsrepr": argsrepr,
            "reply_to": json.dumps(self.app.thread_oid),
            "queue": json.dumps(keys.instance_queue(instance_id)),
            "tag": json.dumps(run_id),  # regina/dispatch.py: found through the instance's open runs
        }
        parts = env.parts
        out = [parts[0]]
        for name, part in zip(env.order, parts[1:], strict=True):
            out += (slots[name], part)
        return "".join(out)

    def send_command(self, member_id: str, command: str, payload: dict[str, Any], token: str | None) -> None:
        """Queue a command on a member's own queue."""
        self._send(
            COMMAND_TASK,
            keys.member_queue(member_id),
            [command, payload, token],
            f"(command={command!r}, instance={payload.get('instanceId')!r})",
        )

    def command_message(self, member_id: str, command: str, payload: dict[str, Any], token: str | None) -> str | None:
        """The command's message as kombu would push it (None off this module's Redis transport)."""
        if self.app.conf.broker_transport != TRANSPORT:
            return None
        with captured_publishes() as out:
            self.send_command(member_id, command, payload, token)
        if len(out) != 1:  # cannot happen on this transport: it would have been sent for real
            raise RuntimeError(f"command publish not captured for {member_id} (got {len(out)})")
        return out[0][1]

    def _unacked(self, instance_id: str) -> dict[str, str]:
        """kombu's unacked entries (tag → raw) of one instance's queue, in the order they were
        delivered (kombu's index scores; the tags themselves are random): steps tagged with their
        run's id (`step_message`) are looked for under the instance's open runs, the others in the
        queue's tag set; tags of the set whose message is gone from kombu's hash leave the set."""
        index = keys.unacked_of(keys.instance_queue(instance_id))
        pipe = self.r.pipeline(transaction=False)
        pipe.smembers(index)
        pipe.zrange(keys.instance_runs(instance_id), 0, -1)
        indexed, runs = cast(tuple[set[str], list[str]], pipe.execute())
        tags = sorted(indexed.union(runs))
        if not tags:
            return {}
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(_UNACKED, tags)
        for tag in tags:
            pipe.zscore(_UNACKED_INDEX, tag)
        raws, *taken_at = pipe.execute()
        gone = [tag for tag, raw in zip(tags, raws, strict=True) if raw is None and tag in indexed]
        if gone:
            self.r.srem(index, *gone)
        rows = [
            (at if at is not None else float("inf"), tag, raw)
            for tag, raw, at in zip(tags, raws, taken_at, strict=True)
        ]
        return {tag: raw for _at, tag, raw in sorted(rows) if raw is not None}

    def restore_unacked(self, instance_id: str) -> int:
        """Requeue, at the head, the steps a dead owner had taken but not acknowledged, in the order
        it took them: a run cut short mid-turn goes on before the run queued behind it starts."""
        queue = keys.instance_queue(instance_id)
        restore = script(self.r, _RESTORE)
        moved = 0
        # kombu publishes with LPUSH and consumes with BRPOP: each RPUSH below goes first in line,
        # so the last taken goes back first and the first taken ends up at the head.
        for tag, raw in reversed(self._unacked(instance_id).items()):
            try:
                payload, _exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if routing_key != queue:
                continue
            payload.setdefault("headers", {})["redelivered"] = True
            payload.get("properties", {}).get("delivery_info", {})["redelivered"] = True
            if restore(keys=[_UNACKED, _UNACKED_INDEX, queue, keys.unacked_of(queue)], args=[tag, json.dumps(payload)]):
                moved += 1
        for _ in range(moved):  # one ready entry per step: its owner's worker reads the queue through them
            notify_owner(self.r, queue)
        return moved

    def waiting_instances(self, instance_ids: Iterable[str]) -> set[str]:
        """Those of `instance_ids` with steps waiting: queued, or taken and not acknowledged (the
        queue's own set of unacknowledged tags, workers/unacked.py, and the steps tagged with an
        open run's id: never the whole `unacked`)."""
        ids = list(instance_ids)
        if not ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for iid in ids:
            pipe.llen(keys.instance_queue(iid))
            pipe.exists(keys.unacked_of(keys.instance_queue(iid)))
            pipe.zrange(keys.instance_runs(iid), 0, -1)
        replies = pipe.execute()
        waiting = {iid for n, iid in enumerate(ids) if replies[3 * n] or replies[3 * n + 1]}
        runs = [(iid, replies[3 * n + 2]) for n, iid in enumerate(ids) if iid not in waiting and replies[3 * n + 2]]
        if runs:
            pipe = self.r.pipeline(transaction=False)
            for _iid, run_ids in runs:
                pipe.hmget(_UNACKED, run_ids)
            for (iid, _run_ids), raws in zip(runs, pipe.execute(), strict=True):
                if any(raw is not None for raw in raws):
                    waiting.add(iid)
        return waiting

    def purge(self, instance_id: str) -> None:
        """Delete the instance queue, kombu's binding keys for it, and the steps of it a dead worker
        left unacknowledged (they would otherwise stay in kombu's `unacked` hash for good)."""
        queue = keys.instance_queue(instance_id)
        tags = list(self._unacked(instance_id))
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}", keys.unacked_of(queue))
        pipe.srem(keys.STRANDED, queue)
        if tags:
            pipe.hdel(_UNACKED, *tags)
            pipe.zrem(_UNACKED_INDEX, *tags)
        pipe.execute()
