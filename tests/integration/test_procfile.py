"""The Procfile lines, run as a platform runs them: two web and two worker processes, one Redis."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.harness.fake_llm import FakeLLM, Reply
from tests.harness.lifeline import die_with_parent
from tests.harness.ports import free_port
from tests.harness.processes import ROOT, Cluster, Proc
from tests.harness.redis_server import RedisServer
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.slow


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture
def platform(fake_llm: FakeLLM, tmp_path: Path) -> Iterator[tuple[list[str], Cluster]]:
    """`web` ×2 and `worker` ×2 from the Procfile, with PORT / REDIS_URL / REGINA_CONFIG set."""
    config = tmp_path / "regina.yaml"
    config.write_text(
        f"regina:\n  agentsDir: {ROOT / 'tests' / 'agents'}\n  vfsDir: {tmp_path / 'vfs'}\n"
        "  memberTtl: 3\n  memberHeartbeat: 0.5\n  host: 127.0.0.1\n"
    )
    server = RedisServer().start()
    c = Cluster(server.url, fake_llm.url)
    lines = procfile()
    env = c.env()
    for key in [k for k in env if k.startswith("REGINA_")]:
        del env[key]  # only what a platform sets, plus the config file
    env.update(REGINA_CONFIG=str(config), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    urls = []
    try:
        for i in range(2):
            c.procs.append(_start(c, f"worker{i + 1}", lines["worker"], env))
        for i in range(2):
            port = free_port()
            proc = _start(c, f"web{i + 1}", lines["web"], {**env, "PORT": str(port)})
            proc.url = f"http://127.0.0.1:{port}"
            c.procs.append(proc)
            urls.append(proc.url)
        r = redis.Redis.from_url(server.url)
        wait_until(
            lambda: len([m for m in r.smembers("regina:members") if r.exists(b"regina:member:" + m)]) == 2,
            timeout=90,
            what="two workers to join",
        )
        for url in urls:
            wait_until(lambda u=url: httpx.get(u + "/healthz", timeout=1).status_code == 200, timeout=60, what=url)
        yield urls, c
    finally:
        c.stop()
        server.close()


def _start(c: Cluster, name: str, line: str, env: dict[str, str]) -> Proc:
    log_path = c.tmp / f"{name}.log"
    popen = subprocess.Popen(
        ["bash", "-c", f"exec {line}"],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    return Proc(name, popen, log_path)


def test_any_web_process_serves_any_instance_and_concurrent_chats_answer(
    platform: tuple[list[str], Cluster], fake_llm: FakeLLM
) -> None:
    urls, _ = platform
    a, b = (httpx.Client(base_url=u, timeout=60) for u in urls)
    ids = [(a if i % 2 else b).post("/agents/openai-agent/instances").json()["instanceId"] for i in range(4)]
    # Spawned through one web process, shown and chatted with through the other.
    for iid in ids:
        assert b.get(f"/instances/{iid}").json()["instanceId"] == iid
        assert a.get(f"/instances/{iid}").json()["status"] == "started"
    members = {a.get(f"/instances/{iid}").json()["member"] for iid in ids}
    assert len(members) == 2  # round-robin placement used both workers

    def chat(job: tuple[int, str]) -> str:
        i, iid = job
        with httpx.Client(base_url=urls[i % 2], timeout=60) as c:
            return str(c.post(f"/instances/{iid}/chat", json={"message": f"hi {i}"}).json()["text"])

    jobs = [(i, ids[i % 4]) for i in range(8)]
    with cf.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(chat, jobs)) == [f"echo: hi {i}" for i, _ in jobs]

    # Two concurrent chats to one instance, through different web processes: both succeed, in order.
    fake_llm.push_for("first-slow", Reply(text="slow answer", delay=0.5))
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(a.post, f"/instances/{ids[0]}/chat", json={"message": "first-slow"})
        fake_llm.wait_for_requests(9, timeout=10)
        second = pool.submit(b.post, f"/instances/{ids[0]}/chat", json={"message": "second"})
        assert first.result(30).json()["text"] == "slow answer"
        assert second.result(30).json()["text"] == "echo: second"
    contents = [m["content"] for m in b.get(f"/instances/{ids[0]}/messages").json()]
    assert contents[-4:] == ["first-slow", "slow answer", "second", "echo: second"]


def _free_base_port() -> int:
    """A base port P with P, P+100 and P+200 free (honcho gives web, worker, flower P + 100·i)."""
    import socket

    for _ in range(50):
        base = free_port()
        if base + 200 > 65535:
            continue
        ok = True
        for port in (base, base + 100, base + 200):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free port triple")


def test_honcho_start_runs_the_procfile_and_flower_sees_workers_tasks_and_queues(
    fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """`honcho start` with our Procfile: a chat completes, and Flower (its line, on PORT) lists the
    worker, the chat's task with named arguments and its queue, and the broker's queue lengths."""
    server = RedisServer().start()
    c = Cluster(server.url, fake_llm.url)
    env = c.env()
    for key in [k for k in env if k.startswith("REGINA_")]:
        del env[key]
    config = tmp_path / "regina.yaml"
    config.write_text(f"regina:\n  agentsDir: {ROOT / 'tests' / 'agents'}\n  vfsDir: {tmp_path / 'vfs'}\n")
    bin_dir = Path(sys.executable).parent
    env.update(
        REGINA_CONFIG=str(config),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        FLOWER_UNAUTHENTICATED_API="true",
    )
    base = _free_base_port()
    log_path = tmp_path / "honcho.log"
    honcho = subprocess.Popen(
        [str(bin_dir / "honcho"), "start", "--port", str(base), "--no-prefix"],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
        start_new_session=True,
    )
    web, flower = f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 200}"
    try:
        wait_until(lambda: httpx.get(web + "/healthz?ready=1", timeout=2).status_code == 200, timeout=120, what="web")
        # PORT is set but no platform marker: a laptop keeps the API on 127.0.0.1, and says so.
        assert "listening on 127.0.0.1 only" in log_path.read_text()
        iid = httpx.post(web + "/agents/openai-agent/instances", timeout=60).json()["instanceId"]
        answer = httpx.post(f"{web}/instances/{iid}/chat", json={"message": "via honcho"}, timeout=60).json()
        assert answer["text"] == "echo: via honcho"

        def worker_listed() -> dict[str, object]:
            return dict(httpx.get(flower + "/api/workers", params={"refresh": "1"}, timeout=10).json())

        workers = wait_until(worker_listed, timeout=90, interval=1, what="Flower to list the worker")
        assert len(workers) == 1 and next(iter(workers)).startswith("w")

        def chat_task() -> dict[str, object] | None:
            tasks = httpx.get(flower + "/api/tasks", timeout=10).json()
            return next((t for t in tasks.values() if t.get("name") == "regina.chat"), None)

        task = wait_until(chat_task, timeout=60, interval=0.5, what="Flower to show the chat task")
        assert task is not None
        assert f"instance='{iid}'" in str(task["args"]) and "message='via honcho'" in str(task["args"])
        assert task["routing_key"] == f"regina.i.{iid}"
        queues = httpx.get(flower + "/api/queues/length", timeout=10)
        assert queues.status_code == 200, queues.text  # the Broker tab works with our transport
        names = {q["name"] for q in queues.json()["active_queues"]}
        assert f"regina.i.{iid}" in names
    except BaseException:
        print(log_path.read_text()[-8000:])
        raise
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
        server.close()


def test_a_worker_whose_start_up_fails_exits_instead_of_idling(make_cluster: Any) -> None:
    """Celery only logs what its start-up signal handlers raise: a worker whose factory cannot be
    imported went on as a process that never joined the cluster (healthy to a platform). The
    command now checks the factory before Celery starts: one line naming it, exit 2."""
    c = make_cluster()
    proc = c.start_worker(env={"REGINA_FACTORY": "no.such.module"}, wait=False)
    wait_until(lambda: not proc.alive(), timeout=60, what="the worker to exit")
    assert proc.popen.returncode == 2
    assert "bad configuration: config key 'factory': cannot import 'no.such.module'" in proc.log()
    assert "Traceback" not in proc.log()
