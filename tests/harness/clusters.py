"""Clusters with a Redis of their own, for tests that need settings the shared cluster lacks.

`private_cluster(llm_url, **env)` starts a Redis server and yields an unstarted `Cluster` over
it whose processes see `env`; leaving the block kills the processes, then stops the Redis server. The
session fixture `make_cluster` (tests/conftest.py) and module fixtures with their own settings
(test_isolation, test_mcp) are built on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer


@contextlib.contextmanager
def private_cluster(llm_url: str, **env: str) -> Iterator[Cluster]:
    """A cluster on a Redis server of its own, stopped (processes first) when the block ends:
    killed, as the Redis goes with them (a test that needs a graceful stop makes it itself)."""
    server = RedisServer().start()
    cluster = Cluster(server.url, llm_url, env_overrides=dict(env))
    try:
        yield cluster
    finally:
        cluster.kill()
        server.close()
