"""kombu's Redis transport: one publishing client per channel, and pools sized for the worker.

kombu's Redis channel builds a new `redis.Redis` object for every publish, acknowledgement and
event batch (`Channel.conn_or_acquire`). Building one copies redis-py's table of ~170 response
callbacks: about 0.25 ms of CPU, a third of a step's publish cost (docs/benchmarks.md). The
client objects share the channel's connection pool either way, so one cached client per pool
behaves the same. `celeryconfig.broker_transport` selects this class.

kombu's channel pool holds 10 connections by default and raises `MaxConnectionsError` when an
11th is wanted. A worker acknowledges from every step's greenlet and its consumer loop takes its
BRPOP connection from the same pool, so at 64 concurrent chats acks failed and the consumer lost
its broker connection (stalled for ~110 s). The pool here is sized from the worker's concurrency
(`configure_worker`, at `celeryd_init`) and blocks for a free connection instead of raising.

kombu's consumer sends one BRPOP naming every queue it consumes, again after every message, so a
worker's cost per message grew with its attached instances (72 ms per message at 5 000 queues,
../shared/FINDINGS-celery.md). Here the instance queues stay the ordered, durable store of steps
(what Flower shows; kombu's unacked index, acks_late and restores unchanged), but a worker blocks
on one list instead: `regina:ready:<memberId>`. Publishing a step to `regina.i.<id>` also pushes
the queue's name onto its owner's ready list, in one script; the worker pops a name, then takes
the oldest step of that queue. Every step on a queue has an entry on its owner's list: a
published step gets one when its owner lives, a restored step gets one, and attaching a queue
pushes one per step already waiting (steps published while the instance was moving). A name
popped for a queue the worker no longer consumes is dropped; a name whose queue is already
empty (a step counted twice) costs one RPOP. The BRPOP names the ready list and the worker's
other queues (its command queue), whatever the number of instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from queue import Empty
from time import monotonic, time
from typing import Any, Protocol

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from regina import keys
from regina.clock import redis_now
from regina.ids import RUN_PREFIX
from regina.redis_conn import PACKER, script
from regina.runs.ack import StepDelivery
from regina.runs.store import BEGIN_FN
from workers.unacked import QueueIndexedQoS

#: Connections a worker needs beside one per greenlet: the consumer's BRPOP, restores, publishes
#: of commands and task events, the pool's health checks.
POOL_HEADROOM = 16
#: Seconds a greenlet waits for a free broker connection before the operation fails.
POOL_WAIT = 30.0


def pool_sizes(concurrency: int) -> dict[str, int]:
    """Broker pool sizes for a process running `concurrency` greenlets at once."""
    return {"max_connections": concurrency + POOL_HEADROOM, "broker_pool_limit": max(64, concurrency + 8)}


def configure_worker(conf: Any, member_id: str, concurrency: int) -> None:
    """Size kombu's channel pool and Celery's connection pool for `concurrency` greenlets, and
    consume instance queues through the member's ready list."""
    sizes = pool_sizes(concurrency)
    conf.broker_transport_options = {
        **(conf.broker_transport_options or {}),
        "max_connections": sizes["max_connections"],
        "ready_key": keys.member_ready(member_id),
    }
    conf.broker_pool_limit = sizes["broker_pool_limit"]


_QUEUE_PREFIX = keys.instance_queue("")
_COMMAND_PREFIX = keys.member_queue("")

# KEYS: instance queue, instance owner key. ARGV: message ('' = only notify), live-member key
# prefix, ready-list prefix. Pushes the message, then the queue's name onto its owner's ready list
# if the owner lives (a dead owner's instances are re-homed; their next owner reads the queue).
_PUT_AND_NOTIFY = """
if ARGV[1] ~= '' then redis.call('LPUSH', KEYS[1], ARGV[1]) end
local owner = redis.call('GET', KEYS[2])
if owner and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  redis.call('LPUSH', ARGV[3] .. owner, KEYS[1])
end
"""

# KEYS: instance queue, unacked index, unacked hash, the queue's unacked tags. ARGV: now (the
# index's score), run id prefix. Takes the queue's oldest step and records it as delivered and
# unacknowledged, as kombu's `QoS.append` does with a MULTI of its own after the pop: one round
# trip, and no moment at which a popped step is in neither place (a worker killed between the two
# lost it). A tag that is not a run's id also goes into the queue's own set (workers/unacked.py):
# a dead owner's steps are found there, and those tagged with their run's id through the
# instance's open runs (workers/dispatcher.py).
#
# Both takes also pop the next name off the worker's ready list (a KEYS entry; ARGV: '1') when
# the consumer may take another step now: under load, steps follow one another with one round
# trip each instead of a BRPOP and a take. Reply: {raw or '', next name or '', …}.
_NEXT_READY = """
local function next_ready(ready, wanted)
  if wanted ~= '1' then return '' end
  return redis.call('RPOP', ready) or ''
end
"""

# The pop of the queue's oldest step and kombu's unacked entry for it (both takes). Returns the
# raw step and whether its tag is its run's id, or nil when the queue is empty — or when the
# instance's record names another member (`record`, `member`): a worker back from a pause
# still consumes the queues of instances that moved meanwhile, until it lets go of them, and
# must not take their new owner's steps.
_POP_UNACKED = """
local function pop_unacked(record, member)
  if redis.call('HGET', record, 'member') ~= member then return nil end
  local raw = redis.call('RPOP', KEYS[1])
  if not raw then return nil end
  local props = cjson.decode(raw)['properties']
  local info = props['delivery_info'] or {}
  local tag = props['delivery_tag']
  redis.call('ZADD', KEYS[2], ARGV[1], tag)
  redis.call('HSET', KEYS[3], tag,
    '[' .. raw .. ',' .. cjson.encode(info['exchange'] or '') .. ',' .. cjson.encode(info['routing_key'] or '') .. ']')
  if string.sub(tag, 1, #ARGV[2]) == ARGV[2] then return raw, tag end
  redis.call('SADD', KEYS[4], tag)
  return raw, nil
end
"""

# KEYS: queue, unacked index, unacked hash, the queue's tag set, ready list, instance record.
# ARGV: now, run id prefix, whether to pop the next ready name, this member's id.
_TAKE_UNACKED = (
    _NEXT_READY
    + _POP_UNACKED
    + """
local raw = pop_unacked(KEYS[6], ARGV[4])
return {raw or '', next_ready(KEYS[5], ARGV[3])}
"""
)

# The take, and the start of the step's run in the same call (`begin` of regina/runs/store.py)
# when the worker says the instance runs nothing and nothing else of it waits (`StepStarts`):
# one round trip less before the model call. KEYS: the first four of _TAKE_UNACKED, instance
# record, steering list, ready list. ARGV: now, run id prefix, epoch, instance id, retention, run
# record prefix, whether to pop the next ready name, this member's id, Redis's clock now (the
# run's start: `now` is this process's clock, kombu's unacked score). Returns {raw, next} for a
# step not tagged with its run's id (its start stays the step's own), else {raw, next, <begin's
# reply…>}.
_TAKE_AND_BEGIN = (
    BEGIN_FN
    + _NEXT_READY
    + _POP_UNACKED
    + """
local raw, tag = pop_unacked(KEYS[5], ARGV[8])
if not tag then return {raw or '', next_ready(KEYS[7], ARGV[7])} end
local run = ARGV[6] .. tag
local out = begin({KEYS[5], run .. ':events', run, KEYS[6], run .. ':steered'}, {ARGV[3], ARGV[9], ARGV[4], ARGV[5]})
table.insert(out, 1, next_ready(KEYS[7], ARGV[7]))
table.insert(out, 1, raw)
return out
"""
)


class StepStarts(Protocol):
    """What the consumer asks the worker's instances (regina/host.py's `InstanceHost`)."""

    def prebegin(self, instance_id: str) -> tuple[int, int] | None:
        """(epoch, run retention) when the instance's next step may start as it is taken: the
        instance is attached here, runs nothing, and no step of it was taken and not started."""

    def taken(self, instance_id: str, tag: str, begun: tuple[int, list[str]] | None) -> None:
        """A step of the instance was taken (delivery `tag`), with (epoch, the begin script's
        reply) when its run was started in the same call."""


#: Steps taken at most per BRPOP of the ready list (each take pops the next name).
_CHAIN = 16


def rekick(client: Any, ready_key: str, queues: list[str]) -> int:
    """Push one ready entry per step waiting on each of `queues` (`_KICK`): after the member's
    ready list was deleted while it was taken for dead, its steps would otherwise wait for
    later publishes. An entry too many only makes a take that finds nothing."""
    kick = script(client, _KICK)
    return sum(int(kick(keys=[queue, ready_key])) for queue in queues)


#: Set by the worker at start-up (workers/context.py); None: every step starts on its own.
_step_starts: StepStarts | None = None


def set_step_starts(starts: StepStarts | None) -> None:
    """Let the consumer start a step's run in its take (see `_TAKE_AND_BEGIN`)."""
    global _step_starts
    _step_starts = starts


# KEYS: instance queue, ready list. One ready entry per step waiting on the queue (at attach).
_KICK = """
local n = redis.call('LLEN', KEYS[1])
for _ = 1, n do redis.call('LPUSH', KEYS[2], KEYS[1]) end
return n
"""


#: Per greenlet: when a list, publishes to instance queues are collected here as (queue, message
#: JSON) instead of sent (`captured_publishes`).
_CAPTURED: ContextVar[list[tuple[str, str]] | None] = ContextVar("regina_captured_publishes", default=None)


@contextmanager
def captured_publishes() -> Iterator[list[tuple[str, str]]]:
    """Collect the messages published to instance and command queues in this block instead of
    sending them: the chat's open script pushes its step itself (regina/runs/store.py), a spawn's
    create and a resume's claim their attach (regina/instances.py), one round trip less than a
    publish of its own, with Celery's message exactly as kombu would have sent it."""
    out: list[tuple[str, str]] = []
    token = _CAPTURED.set(out)
    try:
        yield out
    finally:
        _CAPTURED.reset(token)


#: Queues of instances being spawned: nothing can wait on them yet (their id is not out), so
#: consuming one needs no kick (one round trip less per spawn). See `fresh_queue`.
_fresh: set[str] = set()


@contextmanager
def fresh_queue(queue: str) -> Iterator[None]:
    """Consume a new instance's queue without the kick (start consuming it inside)."""
    _fresh.add(queue)
    try:
        yield
    finally:
        _fresh.discard(queue)


def is_instance_queue(queue: str) -> bool:
    """True for an instance's own step queue (`regina.i.<id>`)."""
    return queue.startswith(_QUEUE_PREFIX)


def is_command_queue(queue: str) -> bool:
    """True for a member's own command queue (`regina.m.<memberId>`)."""
    return queue.startswith(_COMMAND_PREFIX)


def notify_args(queue: str, message: str = "") -> tuple[list[str], list[str]]:
    """(keys, args) of the put-and-notify script for a step on `queue` ('' = only notify)."""
    owner = keys.instance_owner(queue[len(_QUEUE_PREFIX) :])
    return [queue, owner], [message, keys.member(""), keys.member_ready("")]


def notify_owner(client: Any, queue: str) -> None:
    """Push `queue`'s name onto its live owner's ready list (after restoring a step onto it)."""
    queue_keys, args = notify_args(queue)
    client.eval(_PUT_AND_NOTIFY, len(queue_keys), *queue_keys, *args)


# kombu's stubs know little of the Redis channel's internals this class builds on.
_RedisChannel: Any = kombu_redis.Channel


class Channel(_RedisChannel):  # type: ignore[misc]
    """A Redis channel with a cached client, a sized pool, and the ready list (see above).

    `ready_key` (a transport option, set by the worker at `celeryd_init`) turns on consuming
    through the ready list; without it (web processes) the channel only publishes with notify.
    """

    QoS = QueueIndexedQoS
    from_transport_options = (*_RedisChannel.from_transport_options, "ready_key")
    ready_key: str | None = None
    _cached_client: Any = None

    @property
    def member_id(self) -> str:
        """The member consuming through `ready_key` (its steps are those of instances it owns)."""
        return (self.ready_key or "")[len(keys.member_ready("")) :]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Instance queues consumed through the ready list (not named in the BRPOP).
        self._instance_queues: set[str] = set()
        self._scripts: dict[str, Any] = {}

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            with self.conn_or_acquire() as client:
                script = self._scripts[source] = client.register_script(source)
        return script

    # -- publishing -------------------------------------------------------------------------

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        plain = kwargs.get("_publish_batch") is not None or self._expires
        captured = _CAPTURED.get()
        if captured is not None and not plain and (is_instance_queue(queue) or is_command_queue(queue)):
            captured.append((queue, dumps(message)))
            return
        if plain or not is_instance_queue(queue):
            super()._put(queue, message, **kwargs)
            return
        queue_keys, args = notify_args(queue, dumps(message))
        with self.conn_or_acquire() as client:
            self._script(_PUT_AND_NOTIFY)(keys=queue_keys, args=args, client=client)

    def _do_restore_message(
        self, payload: Any, exchange: Any, routing_key: Any, pipe: Any, leftmost: bool = False
    ) -> None:
        instance = not exchange and isinstance(routing_key, str) and is_instance_queue(routing_key)
        # An instance's steps run in queue order: a step given back goes to the head of the line
        # (the right-hand end: kombu takes from there), also from a requeueing reject, which
        # kombu sends to the back (`leftmost`).
        super()._do_restore_message(payload, exchange, routing_key, pipe, False if instance else leftmost)
        if instance:
            notify_owner(pipe, routing_key)  # queued in the restore's MULTI

    # -- consuming ----------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any) -> Any:
        if self.ready_key and is_command_queue(queue) and not no_ack:
            # A command is acknowledged the moment the consumer loop takes it
            # (workers/command_strategy.py), and only this process reads its member's queue:
            # kombu's unacked entries for it were two MULTIs per command that nothing reads.
            super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

            def _command(raw_message: Any) -> Any:
                message = self.Message(raw_message, channel=self)
                virtual.QoS.append(self.qos, message, message.delivery_tag)  # in memory only
                return callback(message)

            self.connection._callbacks[queue] = _command
            return None
        if not self.ready_key or not is_instance_queue(queue):
            return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if no_ack:  # the ready list's take records every step as unacknowledged
            return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        # kombu's virtual basic_consume, minus the O(queues) cycle updates and the BRPOP entry.
        self._tag_to_queue[consumer_tag] = queue

        def _callback(raw_message: Any) -> Any:
            message = self.Message(raw_message, channel=self)
            # In memory only: the take script already wrote kombu's unacked index.
            virtual.QoS.append(self.qos, message, message.delivery_tag)
            return callback(message)

        self.connection._callbacks[queue] = _callback
        self._consumers.add(consumer_tag)
        self._instance_queues.add(queue)
        if queue not in _fresh:
            with self.conn_or_acquire() as client:
                self._script(_KICK)(keys=[queue, self.ready_key], client=client)
        return None

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue is None or queue not in self._instance_queues:
            return super()._basic_cancel(consumer_tag)
        self._instance_queues.discard(queue)
        self._consumers.discard(consumer_tag)
        self._tag_to_queue.pop(consumer_tag, None)
        self.connection._callbacks.pop(queue, None)
        return None

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self.ready_key:
            super()._brpop_start(timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        brpop_keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        # The command queue first: commands (attach, suspend) go before steps.
        command_args = ["BRPOP", *brpop_keys, self.ready_key, timeout or 0]
        if self.global_keyprefix:
            command_args = self.client._prefix_args(command_args)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(*command_args)

    def _brpop_read(self, **options: Any) -> bool:
        if not self.ready_key:
            return bool(super()._brpop_read(**options))
        try:
            connection = self.client.connection
            try:
                dest__item = self.client.parse_response(connection, "BRPOP", **options)
                if not dest__item:
                    raise Empty()
                dest, item = bytes_to_str(dest__item[0]), bytes_to_str(dest__item[1])
                if dest == self.ready_key:
                    self._take_ready(item)
                    return True
            except self.connection_errors:
                connection.disconnect()
                raise
            queue = dest.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self.connection._deliver(loads(item), queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _take_ready(self, name: str) -> None:
        """Take the step of the ready name the BRPOP popped and, while the take pops another
        name and the prefetch limit allows, theirs too (at most `_CHAIN` per BRPOP, so the
        command queue is not starved). Empty when nothing was delivered."""
        delivered = 0
        for n in range(_CHAIN):
            if name not in self._instance_queues:
                break  # released here: its next owner reads the queue itself
            # Same connection, now idle: the queue's oldest step, recorded as unacked.
            took, name = self._take(name, pop_next=n + 1 < _CHAIN and self._room_after_one())
            delivered += took
            if not name:
                break
        if not delivered:
            raise Empty()

    def _room_after_one(self) -> bool:
        """Whether the prefetch limit allows another step once the one being taken is delivered."""
        limit = self.qos.prefetch_count
        return not limit or len(self.qos._delivered) - len(self.qos._dirty) + 1 < limit

    def _take(self, queue: str, pop_next: bool = False) -> tuple[bool, str]:
        """Take `queue`'s oldest step (see _TAKE_UNACKED and _TAKE_AND_BEGIN) and deliver it:
        (whether a step was there, the next ready name popped or '')."""
        take_keys = [queue, self.unacked_index_key, self.unacked_key, keys.unacked_of(queue)]
        starts = None if self.global_keyprefix else _step_starts
        instance_id = queue[len(_QUEUE_PREFIX) :]
        pre = starts.prebegin(instance_id) if starts is not None else None
        begun: tuple[int, list[str]] | None = None
        wanted = "1" if pop_next and self.ready_key else "0"
        record = keys.instance_record(instance_id)
        if pre is None:
            reply = self._script(_TAKE_UNACKED)(
                keys=[*take_keys, self.ready_key or "", record],
                args=[time(), RUN_PREFIX, wanted, self.member_id],
                client=self.client,
            )
        else:
            epoch, retention = pre
            reply = self._script(_TAKE_AND_BEGIN)(
                keys=[*take_keys, record, keys.steering(instance_id), self.ready_key or ""],
                args=[
                    time(),
                    RUN_PREFIX,
                    epoch,
                    instance_id,
                    retention,
                    keys.RUN_PREFIX,
                    wanted,
                    self.member_id,
                    repr(redis_now(self.client)),  # the run's start: Redis's clock, as `RunStore.begin`
                ],
                client=self.client,
            )
            if len(reply) > 2:
                begun = (epoch, [bytes_to_str(x) for x in reply[2:]])
        raw, following = reply[0], bytes_to_str(reply[1])
        if not raw:
            return False, following  # counted twice; already taken
        payload = loads(bytes_to_str(raw))
        if starts is not None:
            starts.taken(instance_id, payload["properties"]["delivery_tag"], begun)
        self.connection._deliver(payload, queue)
        return True, following

    def _get_pool(self, asynchronous: bool = False) -> Any:
        """A pool that waits for a free connection (up to POOL_WAIT) instead of raising."""
        params = self._connparams(asynchronous=asynchronous)
        prefix: str = getattr(self, "keyprefix_fanout")  # noqa: B009 (untyped in kombu)
        self.keyprefix_fanout = prefix.format(db=params["db"])
        return redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            timeout=POOL_WAIT, command_packer=PACKER, **params
        )

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # replaced after a fork or a reconnect: rebuild the client then
        cached = self._cached_client
        if cached is None or cached.connection_pool is not pool:
            cached = self._cached_client = self._create_client()
        yield cached


def step_delivery(message: Any, run_id: str) -> StepDelivery | None:
    """The delivery of a step for its run's finish script to acknowledge (regina/runs/ack.py);
    None when it came through another broker, which acknowledges on its own."""
    channel = message.channel
    if not isinstance(channel, Channel) or channel.global_keyprefix:
        return None
    queue = keys.unacked_of(str(message.delivery_info.get("routing_key", "")))
    return StepDelivery(run_id, channel.unacked_index_key, channel.unacked_key, message.delivery_tag, queue)


def forget_settled(message: Any) -> None:
    """The finish script removed the step from kombu's unacked index: drop it from the channel's
    in-memory delivered set too, with no round trip (kombu's ack would repeat the removal)."""
    virtual.QoS.ack(message.channel.qos, message.delivery_tag)
    message._state = "ACK"


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel
