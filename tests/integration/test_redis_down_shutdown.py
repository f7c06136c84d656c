"""A worker whose Redis is down: SIGTERM still ends it (warm shutdown has a deadline), and its
background loops log one-line warnings while Redis is unreachable, not a traceback per retry."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from tests.harness.fake_llm import FakeLLM
from tests.harness.processes import Cluster
from tests.harness.redis_server import RedisServer

pytestmark = pytest.mark.slow


def test_sigterm_ends_a_worker_whose_redis_is_down(fake_llm: FakeLLM) -> None:
    server = RedisServer().start()
    c = Cluster(server.url, fake_llm.url, env_overrides={"REGINA_SHUTDOWN_TIMEOUT": "5"})
    try:
        worker = c.start_worker()
        mark = len(worker.log())
        server.stop()
        time.sleep(8)
        worker.popen.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            worker.popen.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running 20 s after SIGTERM:\n{worker.log()[-3000:]}")
        assert time.monotonic() - started < 15
        assert worker.popen.returncode != 0
        down = worker.log()[mark:]
        # no traceback through our code (Celery's consumer prints one of its own when it loses Redis)
        assert not re.search(r'File ".*/(regina|workers)/', down), down[-3000:]
        ours = re.findall(r" regina\.\w+: .*", down)
        assert 0 < len(ours) < 20, "\n".join(ours)
        assert "shutdown did not finish in 5 s" in down, down[-3000:]
    finally:
        c.kill()
        server.close()
