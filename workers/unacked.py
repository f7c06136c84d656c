"""kombu's unacked bookkeeping, indexed by queue: a dead owner's steps are found without reading
every unacknowledged message of the cluster.

kombu's Redis QoS keeps every delivered, unacknowledged message in one hash (`unacked`, bodies
included) and its delivery time in `unacked_index`. Finding the steps one instance's dead owner
held meant an HGETALL of the whole hash. Now:

- a chat step the web's open script pushed has its run's id as its delivery tag
  (workers/dispatcher.py `step_message`): while its run is open, the instance's open runs
  (`regina:inst:<id>:runs`, written anyway) name it, so the take script and the run's finish
  script write no index of their own for it; a run cancelled while queued (its step may be taken
  already) puts its id into the queue's set below instead (regina/runs/store.py `_CANCEL`);
- any other step of an instance queue has its delivery tag in `regina:unacked:<queue>`
  (keys.unacked_of), written and removed in the same call as kombu's two entries, so the index
  never disagrees with them: the take script (workers/transport.py) and the finish script
  (regina/runs/stream.py); in this QoS, kombu's append (a consumer not on the ready list) and ack
  (a steered, stale or failed step) as one script each instead of kombu's MULTI/EXEC; reject and
  kombu's restore (at shutdown) in their own transaction (these also remove a run-id tag, which
  is then not in the set: harmless).

A member's command queue has none in Redis: a command is acknowledged as the consumer loop
takes it, so its delivery is kept in memory only (workers/transport.py). A tag left in a queue's
set whose message is gone from `unacked` (a restore by kombu's visibility timeout, if one ever
runs) is harmless: readers skip it and remove it (workers/dispatcher.py).
"""

from __future__ import annotations

from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from regina import keys

_QUEUE_PREFIX = keys.instance_queue("")
_COMMAND_PREFIX = keys.member_queue("")

# KEYS: unacked_index, unacked, the queue's tag set. ARGV: time, tag, [message, exchange, key].
_APPEND = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
"""

# KEYS: unacked_index, unacked, the queue's tag set. ARGV: tag.
_REMOVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
"""

# kombu's stubs know little of the Redis QoS this class builds on.
_RedisQoS: Any = kombu_redis.QoS
_VirtualQoS: Any = virtual.QoS


def _instance_queue(message: Any) -> str | None:
    routing_key = message.delivery_info.get("routing_key") if message is not None else None
    return routing_key if isinstance(routing_key, str) and routing_key.startswith(_QUEUE_PREFIX) else None


def _command_queue(message: Any) -> bool:
    routing_key = message.delivery_info.get("routing_key") if message is not None else None
    return isinstance(routing_key, str) and routing_key.startswith(_COMMAND_PREFIX)


class QueueIndexedQoS(_RedisQoS):  # type: ignore[misc]
    """kombu's Redis QoS that also keeps each instance queue's unacknowledged delivery tags."""

    def _keys(self, queue: str) -> list[str]:
        return [self.unacked_index_key, self.unacked_key, keys.unacked_of(queue)]

    def append(self, message: Any, delivery_tag: str) -> None:
        queue = _instance_queue(message)
        if queue is None:
            super().append(message, delivery_tag)
            return
        body = dumps([message._raw, message.delivery_info["exchange"], queue])
        with self.channel.conn_or_acquire() as client:
            self.channel._script(_APPEND)(keys=self._keys(queue), args=[time(), delivery_tag, body], client=client)
        _VirtualQoS.append(self, message, delivery_tag)

    def _remove(self, delivery_tag: str) -> bool:
        """Drop the tag from kombu's two entries and its queue's set; False when not ours."""
        queue = _instance_queue(self._delivered.get(delivery_tag))
        if queue is None:
            return False
        with self.channel.conn_or_acquire() as client:
            self.channel._script(_REMOVE)(keys=self._keys(queue), args=[delivery_tag], client=client)
        return True

    def ack(self, delivery_tag: str) -> None:
        if _command_queue(self._delivered.get(delivery_tag)):
            _VirtualQoS.ack(self, delivery_tag)  # never written to Redis (workers/transport.py)
            return
        if not self._remove(delivery_tag):
            super().ack(delivery_tag)
            return
        _VirtualQoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue or not self._remove(delivery_tag):
            super().reject(delivery_tag, requeue=requeue)
            return
        _VirtualQoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        """kombu's restore of what this channel took (at shutdown), newest first: each step goes
        back to the head of its queue, so the oldest ends up first again (kombu's, oldest first,
        reversed them)."""
        with self.channel.conn_or_acquire(client) as conn:
            for tag in reversed(list(self._delivered)):
                self.restore_by_tag(tag, client=conn)
        self._delivered.clear()

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        """kombu's restore (at shutdown, on a requeueing reject), also leaving the queue's set."""

        def restore_transaction(pipe: Any) -> None:
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if raw:
                message, exchange, routing_key = loads(bytes_to_str(raw))
                if isinstance(routing_key, str) and routing_key.startswith(_QUEUE_PREFIX):
                    pipe.srem(keys.unacked_of(routing_key), tag)
                self.channel._do_restore_message(message, exchange, routing_key, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as conn:
            conn.transaction(restore_transaction, self.unacked_key)
