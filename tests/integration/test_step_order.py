"""One instance's steps run in the order they were queued, also when a taken step goes back
(a requeueing reject: its owner found it was no longer the instance's owner; a worker's warm
shutdown giving back what it took). The instance queue is a list: kombu publishes with LPUSH and
takes from the right, so a step given back goes to the right-hand end, the head of the line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer

from regina import keys
from tests.harness.redis_server import RedisServer


class _Consumer:
    """A worker's channel consuming one instance queue through its ready list."""

    def __init__(self, url: str) -> None:
        self.iid = f"order-{uuid.uuid4().hex[:12]}"
        self.queue = keys.instance_queue(self.iid)
        member = f"m-{uuid.uuid4().hex[:8]}"
        # The instance is this member's: a take leaves the steps of another's alone.
        redis.Redis.from_url(url).hset(keys.instance_record(self.iid), "member", member)
        self.conn = Connection(
            url, transport="workers.transport:Transport", transport_options={"ready_key": keys.member_ready(member)}
        )
        self.channel: Any = self.conn.channel()
        self.got: list[Any] = []
        self.channel.basic_consume(self.queue, False, self.got.append, f"tag-{self.iid}")
        self.producer = Producer(self.channel, exchange=Exchange(""), routing_key=self.queue)

    def publish(self, *steps: int) -> None:
        for n in steps:
            self.producer.publish({"step": n}, routing_key=self.queue, declare=[])

    def take(self) -> Any:
        took, _next = self.channel._take(self.queue)
        return self.got[-1] if took else None

    def drain(self) -> list[int]:
        order = []
        while (message := self.take()) is not None:
            order.append(message.decode()["step"])
            message.ack()
        return order


@pytest.fixture
def consumer(redis_server: RedisServer) -> Iterator[_Consumer]:
    c = _Consumer(redis_server.url)
    try:
        yield c
    finally:
        r = redis.Redis.from_url(redis_server.url)
        r.delete(c.queue, keys.unacked_of(c.queue), keys.instance_record(c.iid))
        c.conn.release()


def test_a_step_given_back_by_a_reject_goes_first_again(consumer: _Consumer) -> None:
    consumer.publish(1, 2)
    first = consumer.take()
    assert first.decode()["step"] == 1
    first.reject(requeue=True)
    assert consumer.drain() == [1, 2]


def test_steps_given_back_at_shutdown_keep_their_order(consumer: _Consumer) -> None:
    consumer.publish(3, 4, 5)
    taken = [consumer.take(), consumer.take()]
    assert [m.decode()["step"] for m in taken] == [3, 4]
    consumer.channel.qos.restore_unacked()
    assert consumer.drain() == [3, 4, 5]
