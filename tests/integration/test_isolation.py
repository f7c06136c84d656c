"""Where tools run (docs/isolation.md): never on the worker's event loop; `useProcesses` children.

One private cluster (one worker, one web) with its own agents: `spin-agent` runs its tools in the
worker's thread pool, `proc-agent` (frontmatter `useProcesses: true`) in a child process per
instance. Its limits are small so each failure mode shows in seconds: toolTimeout 15 s,
toolMemoryMb 400 (the CPU limit has a cluster of its own: a CPU-second limit met in wall-clock
seconds depends on how busy the machine is). memberTtl is 3 s with a heartbeat every 0.5 s (the harness
default), so a worker whose event loop stalls for 3 s loses its member key.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from tests.harness.clusters import private_cluster
from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.slow

TOOL = """
import os
import time

from pydantic import BaseModel

from regina.runtime.tools.base import tool


class Params(BaseModel):
    mode: str
    seconds: float = 1.0


@tool(description="test tool: spin, burn, sleep, exit, alloc or pid", parameters=Params)
def work(p: Params) -> dict:
    if p.mode == "exit":
        os._exit(1)
    if p.mode == "alloc":
        hog = bytearray(2_000_000_000)
        return {"allocated": len(hog)}
    if p.mode == "sleep":
        time.sleep(p.seconds)
    if p.mode == "burn":  # CPU seconds, however long that takes on a busy machine
        end = time.process_time() + p.seconds
        while time.process_time() < end:
            pass
    if p.mode == "spin":
        end = time.monotonic() + p.seconds
        n = 0
        while time.monotonic() < end:
            n += 1
    return {"pid": os.getpid(), "env": sorted(os.environ)}
"""

AGENT = """---
name: {name}
model: gpt-4o
tools:
  - ./tools/work.py
{extra}---
You are {name}.
"""


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM, redis_server: Any) -> Iterator[Cluster]:
    agents = tmp_path_factory.mktemp("iso-agents")
    (agents / "tools").mkdir()
    (agents / "tools" / "work.py").write_text(TOOL)
    (agents / "spin-agent.md").write_text(AGENT.format(name="spin-agent", extra=""))
    (agents / "proc-agent.md").write_text(AGENT.format(name="proc-agent", extra="useProcesses: true\n"))
    env = {
        "REGINA_AGENTS_DIR": str(agents),
        "REGINA_LIMITS__TOOL_TIMEOUT": "15",
        "REGINA_LIMITS__TOOL_CPU_SECONDS": "60",
        "REGINA_LIMITS__TOOL_MEMORY_MB": "400",
        "REGINA_IDLE_TIMEOUT": "0",
    }
    with private_cluster(fake_llm.url, **env) as c:
        yield c.start()


@pytest.fixture
def api(iso: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=iso.web.url, timeout=60) as client:
        yield client


def _worker(c: Cluster) -> Any:
    return next(p for p in c.procs if p.name.startswith("worker"))


def _spawn(api: httpx.Client, agent: str) -> str:
    resp = api.post(f"/agents/{agent}/instances")
    assert resp.status_code == 201, resp.text
    return str(resp.json()["instanceId"])


def _tool_chat(api: httpx.Client, fake: FakeLLM, iid: str, args: dict[str, Any], **kw: Any) -> tuple[Any, str]:
    """One chat in which the model calls `work(args)` once; (chat response, the tool's result)."""
    marker = f"run-{uuid.uuid4().hex}"
    fake.push_for(marker, Reply(tool_calls=[ToolCall("work", args)]), Reply(text=f"done {marker}"))
    resp = api.post(f"/instances/{iid}/chat", json={"message": marker}, **kw)
    history = api.get(f"/instances/{iid}/messages").json()
    results = [m["content"] for m in history if m["role"] == "tool"]
    return resp, results[-1]


def _member_watch(c: Cluster) -> tuple[Callable[[], list[float]], threading.Event]:
    """Sample the worker's member key every 0.1 s; returns (gaps seen, stop event)."""
    client = redis.Redis.from_url(c.redis_url)
    key = f"regina:member:{_worker(c).member_id}"
    missing: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not client.exists(key):
                missing.append(time.time())
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    return lambda: missing, stop


@pytest.mark.parametrize("agent", ["spin-agent", "proc-agent"])
def test_a_cpu_bound_tool_leaves_heartbeats_and_other_instances_going(
    iso: Cluster, api: httpx.Client, fake_llm: FakeLLM, agent: str
) -> None:
    """A tool spinning the CPU for 8 s: the member key (TTL 3 s, renewed every 0.5 s) never
    lapses and another instance on the same worker answers chats meanwhile. With the tool on the
    event loop the hub stops for 8 s, more than twice the TTL: the key expires (a false failover)
    and the other chats wait the whole 8 s — the same failure a 20 s spin shows with memberTtl 10."""
    spinner, other = _spawn(api, agent), _spawn(api, "spin-agent")
    api.post(f"/instances/{other}/chat", json={"message": "warm up"})
    missing, stop = _member_watch(iso)
    outcome: dict[str, Any] = {}
    worker = _worker(iso)

    def spin() -> None:
        with httpx.Client(base_url=api.base_url, timeout=60) as client:
            outcome["resp"], outcome["result"] = _tool_chat(client, fake_llm, spinner, {"mode": "spin", "seconds": 8})

    t = threading.Thread(target=spin)
    started = time.monotonic()
    t.start()
    fake_llm.wait_for_requests(len(fake_llm.requests) + 1)
    latencies = []
    while time.monotonic() - started < 7:
        t0 = time.monotonic()
        resp = api.post(f"/instances/{other}/chat", json={"message": "still there?"})
        latencies.append(time.monotonic() - t0)
        assert resp.status_code == 200, resp.text
        time.sleep(0.2)
    t.join(60)
    stop.set()
    assert outcome["resp"].status_code == 200
    assert '"pid"' in outcome["result"], outcome["result"]
    assert missing() == [], f"member key missing at {len(missing())} samples: a false failover"
    assert max(latencies) < 4.0, latencies  # never the whole 8 s
    assert len(latencies) >= 5, latencies
    rec = redis.Redis.from_url(iso.redis_url, decode_responses=True).hgetall(f"regina:inst:{spinner}")
    assert rec.get("member") == worker.member_id and rec.get("epoch") == "1", rec


def test_a_tool_process_that_exits_fails_only_that_call(iso: Cluster, api: httpx.Client, fake_llm: FakeLLM) -> None:
    worker = _worker(iso)
    iid = _spawn(api, "proc-agent")
    _, before = _tool_chat(api, fake_llm, iid, {"mode": "pid"})
    resp, result = _tool_chat(api, fake_llm, iid, {"mode": "exit"})
    assert resp.status_code == 200 and resp.json()["text"].startswith("done")
    assert "its process exited with status 1" in result, result
    _, after = _tool_chat(api, fake_llm, iid, {"mode": "pid"})
    assert '"pid"' in after and after != before  # a fresh child serves the next call
    assert worker.alive() and "Restarting" not in worker.log()


def test_a_tool_past_its_memory_limit_fails_only_that_call(iso: Cluster, api: httpx.Client, fake_llm: FakeLLM) -> None:
    worker = _worker(iso)
    iid = _spawn(api, "proc-agent")
    resp, result = _tool_chat(api, fake_llm, iid, {"mode": "alloc"})
    assert resp.status_code == 200
    assert "ran out of memory (limits.toolMemoryMb = 400 MB)" in result, result
    resp, result = _tool_chat(api, fake_llm, iid, {"mode": "pid"})
    assert resp.status_code == 200 and '"pid"' in result
    assert worker.alive()


def test_a_tool_past_its_cpu_limit_fails_only_that_call(
    make_cluster: Callable[..., Cluster], iso: Cluster, fake_llm: FakeLLM
) -> None:
    agents = Path(iso.env()["REGINA_AGENTS_DIR"])
    c = make_cluster(REGINA_AGENTS_DIR=str(agents), REGINA_LIMITS__TOOL_CPU_SECONDS="1")
    worker = c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=180) as client:
        iid = _spawn(client, "proc-agent")
        resp, result = _tool_chat(client, fake_llm, iid, {"mode": "burn", "seconds": 5})
        assert resp.status_code == 200
        assert "CPU limit (limits.toolCpuSeconds = 1 s)" in result, result
        _, result = _tool_chat(client, fake_llm, iid, {"mode": "pid"})
        assert '"pid"' in result
    assert worker.alive()


def test_a_tool_process_sees_only_the_allowed_environment(iso: Cluster, api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = _spawn(api, "proc-agent")
    _, result = _tool_chat(api, fake_llm, iid, {"mode": "pid"})
    assert "OPENAI_API_KEY" not in result and "REDIS_URL" not in result
    assert "PATH" in result


@pytest.mark.parametrize("agent", ["spin-agent", "proc-agent"])
def test_a_stuck_tool_times_out_and_the_instance_can_be_suspended_and_deleted(
    iso: Cluster, api: httpx.Client, fake_llm: FakeLLM, agent: str
) -> None:
    iid = _spawn(api, agent)
    t0 = time.monotonic()
    resp, result = _tool_chat(api, fake_llm, iid, {"mode": "sleep", "seconds": 60})
    assert resp.status_code == 200
    assert 14 < time.monotonic() - t0 < 40
    assert "timed out after 15 s (limits.toolTimeout)" in result, result
    assert api.post(f"/instances/{iid}/chat", json={"message": "next"}).status_code == 200
    assert api.post(f"/instances/{iid}/suspend").status_code in (200, 204)
    assert api.delete(f"/instances/{iid}").status_code in (200, 204)


def _tool_pid(result: str) -> int:
    import json

    return int(json.loads(result)["pid"])


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_tool_processes_are_reaped_on_suspend_delete_and_worker_shutdown(
    make_cluster: Callable[..., Cluster], iso: Cluster, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    agents = Path(iso.env()["REGINA_AGENTS_DIR"])
    c = make_cluster(REGINA_AGENTS_DIR=str(agents), REGINA_IDLE_TIMEOUT="0")
    worker = c.start_worker()
    web = c.start_web()
    with httpx.Client(base_url=web.url, timeout=60) as client:
        a, b, d = (_spawn(client, "proc-agent") for _ in range(3))
        pids = {iid: _tool_pid(_tool_chat(client, fake_llm, iid, {"mode": "pid"})[1]) for iid in (a, b, d)}
        assert len(set(pids.values())) == 3 and worker.popen.pid not in pids.values()
        descendants = {p.pid for p in psutil.Process(worker.popen.pid).children(recursive=True)}
        assert set(pids.values()) <= descendants  # counted with the worker's processes
        assert client.post(f"/instances/{a}/suspend").status_code in (200, 204)
        wait_until(lambda: _gone(pids[a]), timeout=10, what="child of suspended instance still alive")
        assert client.delete(f"/instances/{b}").status_code in (200, 204)
        wait_until(lambda: _gone(pids[b]), timeout=10, what="child of deleted instance still alive")
        assert not _gone(pids[d])
    worker.stop()
    wait_until(lambda: all(_gone(p) for p in descendants), timeout=15, what="orphan processes after shutdown")


@pytest.mark.chaos
def test_a_tool_process_stuck_in_a_call_dies_with_a_killed_worker(
    make_cluster: Callable[..., Cluster], iso: Cluster, fake_llm: FakeLLM
) -> None:
    agents = Path(iso.env()["REGINA_AGENTS_DIR"])
    c = make_cluster(REGINA_AGENTS_DIR=str(agents), REGINA_IDLE_TIMEOUT="0")
    worker = c.start_worker()
    web = c.start_web()
    pid = worker.popen.pid
    with httpx.Client(base_url=web.url, timeout=60) as client:
        iid = _spawn(client, "proc-agent")
        marker = f"stuck-{uuid.uuid4().hex}"
        fake_llm.push_for(marker, Reply(tool_calls=[ToolCall("work", {"mode": "sleep", "seconds": 300})]))

        def chat() -> None:
            try:
                client.post(f"/instances/{iid}/chat", json={"message": marker}, timeout=5)
            except httpx.HTTPError:
                pass

        threading.Thread(target=chat, daemon=True).start()

        def tool_children() -> list[psutil.Process]:
            return [p for p in psutil.Process(pid).children(recursive=True) if p.ppid() != pid]

        stuck = wait_until(tool_children, timeout=30, what="the tool process")
        descendants = psutil.Process(pid).children(recursive=True)
        assert stuck
        worker.kill()
        wait_until(
            lambda: all(_gone(p.pid) for p in descendants), timeout=15, what="tool processes outliving a killed worker"
        )
