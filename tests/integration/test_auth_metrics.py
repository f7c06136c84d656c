"""Optional bearer-token auth, and the Prometheus metrics endpoint."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer

pytestmark = pytest.mark.slow


def test_bearer_token_is_required_when_configured(make_cluster: Callable[..., Cluster]) -> None:
    c = make_cluster(REGINA_AUTH_TOKEN="s3cret")
    c.start_worker()
    web = c.start_web()
    anonymous = httpx.Client(base_url=web.url, timeout=30)
    wrong = httpx.Client(base_url=web.url, timeout=30, headers={"Authorization": "Bearer nope"})
    right = httpx.Client(base_url=web.url, timeout=30, headers={"Authorization": "Bearer s3cret"})

    assert anonymous.get("/healthz").status_code == 200  # liveness stays open
    for client in (anonymous, wrong):
        resp = client.post("/agents/openai-agent/instances")
        assert resp.status_code == 401 and "bearer token" in resp.json()["error"]
    assert right.get("/instances").json() == []  # the refused spawns changed nothing
    iid = right.post("/agents/openai-agent/instances").json()["instanceId"]
    assert right.post(f"/instances/{iid}/chat", json={"message": "hi"}).json()["text"] == "echo: hi"

    # The metrics count what this web process answered.
    text = right.get("/metrics").text
    assert 'regina_http_requests_total{endpoint="/agents/<def_id>/instances",method="POST",status="401"} 2.0' in text
    assert 'regina_runs_started_total{mode="sync"} 1.0' in text
    assert "regina_http_request_seconds_bucket" in text
    for client in (anonymous, wrong, right):
        client.close()


def test_an_empty_auth_token_is_a_warning_at_web_start(fake_llm: FakeLLM) -> None:
    with RedisServer() as server:
        c = Cluster(server.url, fake_llm.url)
        try:
            web = c.start_web(env={"REGINA_AUTH_TOKEN": ""})
            assert re.search(r"WARNING .*REGINA_AUTH_TOKEN\) is set but empty: auth is off", web.log()), web.log()
        finally:
            c.stop()
