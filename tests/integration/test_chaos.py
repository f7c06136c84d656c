"""Nothing acknowledged is lost: kill -9 a worker under load, pause one past its TTL.

Real processes (3 workers, one web, a private Redis, the fake LLM), the default storage (the
cluster's Redis) and no shared `vfsDir`: each worker has its own directory, as on separate
machines. Workers run in process groups of their own and die as a group (tool processes too).
Half the instances run their tools in a process of their own (`useProcesses`).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.harness.fake_llm import FakeLLM, RecordedRequest, Reply, ToolCall, default_reply
from tests.harness.processes import Cluster
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

AGENTS = Path(__file__).resolve().parents[1] / "chaos_agents"
MEMBER_TTL = 3.0


def _cluster(make_cluster: Callable[..., Cluster], tmp_path: Path, workers: int) -> tuple[Cluster, list[Any], str]:
    log = tmp_path / "tool-runs.log"
    c = make_cluster(
        REGINA_AGENTS_DIR=str(AGENTS),
        REGINA_MEMBER_TTL=str(MEMBER_TTL),
        REGINA_ALLOWED_ENV="[PATH, HOME, LANG, CHAOS_TOOL_LOG]",  # the tool processes log too
        REGINA_IDLE_TIMEOUT="0",
        CHAOS_TOOL_LOG=str(log),
    )
    procs = [c.start_worker(wait=False) for _ in range(workers)]
    for p in procs:
        c.wait_worker(p)
    web = c.start_web()
    return c, procs, web.url


def _tool_runs(tmp_path: Path) -> Counter[str]:
    path = tmp_path / "tool-runs.log"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def _work_model() -> Callable[[RecordedRequest], Reply]:
    """The model of the "work N now" chats, answering from the conversation rather than from a
    queue of replies (a worker killed after taking a reply from a queue, before its tool call
    reached the journal, left the re-run the next reply: no tool call, no /work.txt). The chat
    writes /work.txt (again when its write's outcome is unknown), then (every third) calls the
    slow tool once, then answers: after 2 s the first time, at once when asked again after the
    kill. Any other chat (the pings) gets the echo."""
    asked: set[int] = set()
    lock = threading.Lock()

    def reply(req: RecordedRequest) -> Reply:
        users = [i for i, m in enumerate(req.messages) if m["role"] == "user"]
        found = re.fullmatch(r"work (\d+) now", req.messages[users[-1]]["content"]) if users else None
        if found is None:
            return default_reply(req)
        n, turn = int(found.group(1)), req.messages[users[-1] :]
        if not any(m["role"] == "tool" and m["content"].startswith("wrote ") for m in turn):  # or outcome unknown
            return Reply(tool_calls=[ToolCall("write_file", {"path": "/work.txt", "content": f"work-{n}"})])
        if n % 3 == 0:
            if not any(c["name"] == "slow_mark" for m in turn for c in m.get("tool_calls") or []):
                return Reply(tool_calls=[ToolCall("slow_mark", {"tag": f"tool-{n}", "seconds": 4.0})])
            return Reply(text=f"after tool {n}")
        with lock:
            first = n not in asked
            asked.add(n)
        return Reply(text=f"answer {n}", delay=2.0 if first else 0.0)

    return reply


def _history(api: httpx.Client, iid: str) -> list[dict[str, Any]]:
    resp = api.get(f"/instances/{iid}/messages")
    assert resp.status_code == 200, resp.text
    return list(resp.json())


@pytest.mark.timeout(300)
def test_kill_9_under_load_loses_nothing_acknowledged(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given 30 instances over 3 workers (every other one with its tools in a process of its own),
    # each with a file written by an acknowledged chat
    c, workers, url = _cluster(make_cluster, tmp_path, 3)
    api = httpx.Client(base_url=url, timeout=120)
    agents = ["chaos-agent", "chaos-proc-agent"]
    spawned = [api.post(f"/agents/{agents[n % 2]}/instances") for n in range(30)]
    assert all(r.status_code == 201 for r in spawned), spawned[0].text
    iids = [r.json()["instanceId"] for r in spawned]
    for n in range(len(iids)):
        fake_llm.push_for(
            f"seed {n} now",
            Reply(tool_calls=[ToolCall("write_file", {"path": "/f.txt", "content": f"seed-{n}"})]),
            Reply(text=f"seeded {n}"),
        )
    with cf.ThreadPoolExecutor(10) as pool:
        seeded = list(
            pool.map(
                lambda a: api.post(f"/instances/{a[1]}/chat", json={"message": f"seed {a[0]} now"}), enumerate(iids)
            )
        )
    assert all(r.status_code == 200 for r in seeded)
    owner = {iid: api.get(f"/instances/{iid}").json()["member"] for iid in iids}
    victim = workers[0]
    doomed = [iid for iid in iids if owner[iid] == victim.member_id]
    assert {iids.index(iid) % 2 for iid in doomed} == {0, 1}, "the victim should hold both kinds of instance"

    # When every instance has a chat in flight that wrote a file — a third of them then inside a
    # slow tool, the others waiting for the model — and one worker's process group is killed
    # with -9 (the worker, its fork server and its tool processes)
    fake_llm.default = _work_model()
    pool = cf.ThreadPoolExecutor(30)
    inflight = {
        iid: pool.submit(api.post, f"/instances/{iid}/chat", json={"message": f"work {n} now"})
        for n, iid in enumerate(iids)
    }
    wait_until(
        lambda: sum(1 for k in _tool_runs(tmp_path) if k.startswith("tool-")) >= 10,
        timeout=30,
        what="every slow tool to start",
    )
    group = victim.kill_group()
    killed_at = time.monotonic()
    assert len(group) >= 3, f"the worker's group should hold its fork server and tool processes: {group}"

    # Then within memberTtl + 5 s every instance answers from a live worker
    def ping(n_iid: tuple[int, str]) -> tuple[str, int, float]:
        n, iid = n_iid
        resp = api.post(f"/instances/{iid}/chat", json={"message": f"ping {n}"})
        return iid, resp.status_code, time.monotonic() - killed_at

    with cf.ThreadPoolExecutor(30) as pings:
        answers = list(pings.map(ping, enumerate(iids)))
    slowest = max(t for _, _, t in answers)
    moved = max(t for iid, _, t in answers if iid in doomed)
    print(f"every instance answered {slowest:.1f} s after the kill, the dead worker's in {moved:.1f} s")
    assert [code for _, code, _ in answers] == [200] * 30
    # the dead worker's instances (their interrupted tools are not run again) within memberTtl + 5 s
    assert moved <= MEMBER_TTL + 5.0
    assert slowest <= MEMBER_TTL + 5.0 + 4.0  # + the in-flight step each ping queues behind
    for iid in doomed:
        assert api.get(f"/instances/{iid}").json()["member"] != victim.member_id

    # and every chat that got a 200 is in its history exactly once, with the seeded file
    done = {iid: fut.result(timeout=120) for iid, fut in inflight.items()}
    pool.shutdown()
    for n, iid in enumerate(iids):
        history = _history(api, iid)
        users = Counter(m["content"] for m in history if m["role"] == "user")
        answers_ = Counter(m["content"] for m in history if m["role"] == "assistant" and m.get("content"))
        assert users[f"seed {n} now"] == 1 and answers_[f"seeded {n}"] == 1, history
        resp = done[iid]
        assert resp.status_code == 200, resp.text
        assert users[f"work {n} now"] == 1 and answers_[resp.json()["text"]] == 1, history
    # and the files every chat wrote are there on whichever worker holds each instance now
    for n, iid in enumerate(iids):
        show = Reply(tool_calls=[ToolCall("bash", {"command": "cat /f.txt; echo; cat /work.txt"})])
        fake_llm.push_for(f"show {n} now", show, Reply(text="shown"))
        assert api.post(f"/instances/{iid}/chat", json={"message": f"show {n} now"}).status_code == 200
        shown = [m for m in _history(api, iid) if m["role"] == "tool"][-1]
        assert f"seed-{n}" in shown["content"] and f"work-{n}" in shown["content"], (iid in doomed, shown)
    # and no tool that started on the dead worker ran twice
    runs = _tool_runs(tmp_path)
    assert all(count == 1 for count in runs.values()), runs
    api.close()


@pytest.mark.timeout(300)
def test_a_paused_worker_writes_nothing_for_instances_that_moved(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # Given two workers and instances with a history on the one that will be paused
    c, (w1, w2), url = _cluster(make_cluster, tmp_path, 2)
    api = httpx.Client(base_url=url, timeout=60)
    iids = [api.post("/agents/chaos-agent/instances").json()["instanceId"] for _ in range(4)]
    on_w1 = [iid for iid in iids if api.get(f"/instances/{iid}").json()["member"] == w1.member_id]
    assert on_w1
    for iid in on_w1:
        assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).status_code == 200

    # When w1 is stopped (SIGSTOP) past memberTtl — mid-step for one instance — and chats move
    # its instances to w2, and then w1 resumes
    fake_llm.push_for("paused mid-step", Reply(text="from the paused worker", delay=1.0))
    with cf.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(api.post, f"/instances/{on_w1[0]}/chat", json={"message": "paused mid-step"})
        fake_llm.wait_for_requests(len(on_w1) + 1, timeout=30)
        os.kill(w1.popen.pid, signal.SIGSTOP)
        try:
            time.sleep(MEMBER_TTL + 1.0)
            for iid in on_w1:
                assert api.post(f"/instances/{iid}/chat", json={"message": "after"}).status_code == 200
        finally:
            os.kill(w1.popen.pid, signal.SIGCONT)
        first = stuck.result(60)
    assert first.status_code == 200
    r = redis.Redis.from_url(c.redis_url, decode_responses=True)
    time.sleep(2.0)  # let w1 run whatever it still would

    # Then no history entry is duplicated or out of order, everything moved to w2, and w1 wrote
    # nothing for the moved instances (its epochs are stale: the journal and records are w2's)
    for iid in on_w1:
        shown = api.get(f"/instances/{iid}").json()
        assert shown["member"] == w2.member_id
        contents = [m["content"] for m in _history(api, iid) if m["role"] == "user"]
        assert contents.count("before") == 1 and contents.count("after") == 1
        assert contents.index("before") < contents.index("after")
    history = _history(api, on_w1[0])
    assert [m["content"] for m in history if m["role"] == "user"].count("paused mid-step") == 1
    assert api.post(f"/instances/{on_w1[0]}/chat", json={"message": "still fine"}).status_code == 200
    assert "dropped from" in w1.log() or "releasing it" in w1.log()
    # the stuck run's events: one terminal event, sequence numbers without gaps or repeats
    events = [json.loads(f["e"]) for _id, f in r.xrange(f"regina:run:{first.headers['X-Run-Id']}:events")]
    assert [e["type"] for e in events].count("finish") == 1
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    r.close()
    api.close()
