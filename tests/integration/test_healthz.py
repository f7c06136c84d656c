"""/healthz answers a platform's probe: in bounded time while Redis hangs, and `ready` is a boolean."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until


@dataclass
class LoneWeb:
    """A web process (no worker) on a Redis of its own."""

    redis: RedisServer
    cluster: Cluster

    @property
    def url(self) -> str:
        return self.cluster.web.url


@pytest.fixture(scope="module")
def lone_web(fake_llm: FakeLLM) -> Iterator[LoneWeb]:
    server = RedisServer().start()
    cluster = Cluster(server.url, fake_llm.url)
    try:
        cluster.start(workers=0)
        yield LoneWeb(server, cluster)
    finally:
        cluster.kill()
        server.close()


def _while_redis_stopped(lone_web: LoneWeb, path: str) -> tuple[httpx.Response, float]:
    """GET `path` while the web's Redis is stopped (a stuck host, a partition): the answer and
    how long it took."""
    assert lone_web.redis.proc is not None
    pid = lone_web.redis.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        resp = httpx.get(lone_web.url + path, timeout=15)
        return resp, time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)


def test_healthz_answers_503_naming_redis_within_seconds_while_redis_is_stopped(lone_web: LoneWeb) -> None:
    assert httpx.get(lone_web.url + "/healthz", timeout=5).status_code == 200
    resp, took = _while_redis_stopped(lone_web, "/healthz")
    assert resp.status_code == 503, resp.text
    assert resp.json()["status"] == "unavailable"
    assert resp.json()["error"] == "Redis is unreachable: no answer within 2 s"
    assert took < 5
    wait_until(lambda: httpx.get(lone_web.url + "/healthz", timeout=5).status_code == 200, what="healthy again")


def test_a_scrape_answers_without_the_cluster_gauges_while_redis_is_stopped(lone_web: LoneWeb) -> None:
    first = httpx.get(lone_web.url + "/metrics", timeout=5)
    assert first.status_code == 200 and "regina_instances{" in first.text
    resp, took = _while_redis_stopped(lone_web, "/metrics")
    assert resp.status_code == 200 and "regina_instances{" not in resp.text and took < 5


def test_healthz_ready_is_a_boolean_and_garbage_is_a_400_naming_it(lone_web: LoneWeb) -> None:
    def get(query: str) -> httpx.Response:
        return httpx.get(lone_web.url + "/healthz" + query, timeout=10)

    # No worker runs: readiness fails, liveness does not.
    for query in ("", "?ready=0", "?ready=false", "?ready=False", "?ready=no", "?ready=off"):
        resp = get(query)
        assert (resp.status_code, resp.json()["status"]) == (200, "ok"), query
    for query in ("?ready=1", "?ready=true", "?ready=yes"):
        resp = get(query)
        assert resp.status_code == 503, query
        body = resp.json()
        assert (body["status"], body["workers"], body["error"]) == ("not ready", 0, "no live worker"), query
    for query in ("?ready=maybe", "?ready=", "?ready=2"):
        resp = get(query)
        assert resp.status_code == 400, query
        assert "query parameter 'ready' must be a boolean" in resp.json()["error"], query
