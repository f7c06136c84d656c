"""Session fixtures: our own Redis, the fake LLM, and a shared cluster of real processes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.harness.clusters import private_cluster
from tests.harness.fake_llm import FakeLLM
from tests.harness.processes import Cluster, clean_env
from tests.harness.redis_server import RedisServer
from tests.harness.s3_server import S3Server

# No test may reach a real model: strip keys and point every base URL nowhere by default.
for _name in list(os.environ):
    if _name.endswith("_API_KEY") or _name.endswith("_BASE_URL"):
        del os.environ[_name]
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    from workers.local import use_broker

    with RedisServer() as server:
        # In-process dispatchers publish through the process's Celery app: to this Redis, never
        # to its default (a Redis this machine may run on 6379, which no test started).
        use_broker(server.url)
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        server.make_bucket("regina-test")
        yield server


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM().start()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def _reset_fake(request: pytest.FixtureRequest) -> None:
    if "fake_llm" in request.fixturenames:
        request.getfixturevalue("fake_llm").reset()


@pytest.fixture(scope="session")
def cluster(redis_server: RedisServer, fake_llm: FakeLLM) -> Iterator[Cluster]:
    """Two workers and one web process shared by the tests that need no special config."""
    c = Cluster(redis_server.url, fake_llm.url)
    try:
        yield c.start(workers=2)
    finally:
        c.stop()


@pytest.fixture
def api(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.web.url, timeout=60) as client:
        yield client


@pytest.fixture
def make_cluster(fake_llm: FakeLLM) -> Iterator[Callable[..., Cluster]]:
    """Factory for a private cluster (own Redis server) with its own settings (idle timeouts,
    storage, …), unstarted (`Cluster.start(workers=…)`); all are stopped after the test."""
    made: list[Cluster] = []
    with contextlib.ExitStack() as stack:

        def make(**env: str) -> Cluster:
            made.append(stack.enter_context(private_cluster(fake_llm.url, **env)))
            return made[-1]

        make.made = made  # type: ignore[attr-defined]  # read by pytest_runtest_makereport
        yield make


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Print the processes' logs when an integration test fails."""
    if call.when == "call" and call.excinfo is not None:
        for name in ("cluster", "make_cluster"):
            value = item.funcargs.get(name) if hasattr(item, "funcargs") else None
            for made in [value, *getattr(value, "made", [])]:
                if isinstance(made, Cluster):
                    print(made.dump_logs())


__all__ = ["clean_env"]
