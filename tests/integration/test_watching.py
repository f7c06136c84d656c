"""Metrics summed across processes, and SIGHUP reloading the agent registry everywhere."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import ROOT, Cluster
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_exactly_across_two_gunicorn_and_two_worker_processes(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    c = make_cluster(
        PROMETHEUS_MULTIPROC_DIR=str(shared), REGINA_STORAGE__TYPE="fs", REGINA_STORAGE__BASE_PATH=str(tmp_path / "b")
    )
    c.start_worker(wait=False)
    c.start_worker(wait=False)
    for proc in c.procs:
        c.wait_worker(proc)
    web = c.start_web(workers=2)
    api = httpx.Client(base_url=web.url, timeout=60)

    ids = [api.post("/agents/openai-agent/instances").json()["instanceId"] for _ in range(3)]
    assert len({api.get(f"/instances/{i}").json()["member"] for i in ids}) == 2  # both workers used

    def chat(job: tuple[int, str]) -> dict[str, object]:
        n, iid = job
        with httpx.Client(base_url=web.url, timeout=60) as own:  # new connections: both web processes
            return dict(own.post(f"/instances/{iid}/chat", json={"message": f"m{n}"}).json())

    with cf.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(chat, [(n, ids[n % 3]) for n in range(6)]))
    fake_llm.push(Reply(tool_calls=[ToolCall("bash", {"command": "echo hi"})]), Reply(text="done"))
    answers.append(dict(api.post(f"/instances/{ids[0]}/chat", json={"message": "use a tool"}).json()))
    # A tool name the model made up counts as "unknown" (not one series per invented name).
    fake_llm.push(Reply(tool_calls=[ToolCall("made_up_tool_x", {})]), Reply(text="done"))
    answers.append(dict(api.post(f"/instances/{ids[0]}/chat", json={"message": "invent a tool"}).json()))
    assert api.post(f"/instances/{ids[1]}/steer", json={"message": "s1"}).status_code == 200
    assert api.post(f"/instances/{ids[1]}/steer", json={"message": "s2"}).status_code == 200
    assert api.post(f"/instances/{ids[2]}/suspend").status_code == 204
    assert api.post(f"/instances/{ids[2]}/resume").status_code == 204

    prompt = sum(int(a["usage"]["promptTokens"]) for a in answers)  # type: ignore[index]
    completion = sum(int(a["usage"]["completionTokens"]) for a in answers)  # type: ignore[index]
    model = (("model", "gpt-4o"), ("provider", "openai"))
    expected = {
        ("regina_spawns_total", (("agent", "openai-agent"),)): 3,
        ("regina_runs_total", (("mode", "sync"), ("outcome", "stop"))): 8,
        ("regina_runs_started_total", (("mode", "sync"),)): 8,
        ("regina_run_steps_sum", ()): 10,
        ("regina_tool_calls_total", (("outcome", "ok"), ("tool", "bash"))): 1,
        ("regina_tool_calls_total", (("outcome", "error"), ("tool", "unknown"))): 1,
        ("regina_tool_calls_total", (("outcome", "error"), ("tool", "made_up_tool_x"))): None,
        ("regina_model_call_seconds_count", model): 10,
        ("regina_tokens_total", (*model, ("type", "prompt"))): prompt,
        ("regina_tokens_total", (*model, ("type", "completion"))): completion,
        ("regina_steering_messages_total", ()): 2,
        ("regina_suspends_total", ()): 1,
        ("regina_backups_total", ()): 1,
        ("regina_resumes_total", ()): 4,
        ("regina_instances", (("status", "started"),)): 3,
        ("regina_instances", (("status", "suspended"),)): 0,
    }
    chat_ok = (
        "regina_http_requests_total",
        (("endpoint", "/instances/<iid>/chat"), ("method", "POST"), ("status", "200")),
    )
    expected[chat_ok] = 8
    # Scrapes land on either gunicorn process; every one must show the same, exact counts.
    for _ in range(6):
        with httpx.Client(base_url=web.url, timeout=30) as scraper:
            got = samples(scraper.get("/metrics").text)
        assert {k: got.get(k) for k in expected} == expected
    assert any(name == "regina_worker_queue_depth" for name, _ in got)


def _agent(path: Path, name: str) -> None:
    path.write_text(f"---\nname: {name}\nmodel: gpt-4o\n---\nYou are {name}.\n")


def test_sighup_to_a_worker_or_a_web_reloads_every_process_and_keeps_instances(
    make_cluster: Callable[..., Cluster], tmp_path: Path, fake_llm: FakeLLM
) -> None:
    agents = tmp_path / "agents"
    shutil.copytree(ROOT / "tests" / "agents", agents)
    c = make_cluster(REGINA_AGENTS_DIR=str(agents))
    worker = c.start_worker()
    web = c.start_web(workers=2)
    api = httpx.Client(base_url=web.url, timeout=60)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    assert api.post(f"/instances/{iid}/chat", json={"message": "before"}).json()["text"] == "echo: before"

    def listed(name: str) -> bool:
        # both gunicorn processes: new connections each time
        return all(name in [a["id"] for a in httpx.get(web.url + "/agents", timeout=5).json()] for _ in range(4))

    # SIGHUP to the worker: it reloads, and so do the web processes; it does not restart.
    _agent(agents / "fresh.md", "fresh")
    os.kill(worker.popen.pid, signal.SIGHUP)
    wait_until(lambda: listed("fresh"), timeout=30, interval=0.3, what="the web to learn 'fresh'")
    assert worker.alive()
    assert api.get(f"/instances/{iid}").json()["status"] == "started"
    assert api.post(f"/instances/{iid}/chat", json={"message": "after"}).json()["text"] == "echo: after"
    assert api.post("/agents/fresh/instances").status_code == 201

    # SIGHUP to the web's master: its processes and the worker reload; nothing restarts.
    _agent(agents / "fresher.md", "fresher")
    pids = {p for p in [web.popen.pid]}
    os.kill(web.popen.pid, signal.SIGHUP)
    wait_until(lambda: listed("fresher"), timeout=30, interval=0.3, what="the web to learn 'fresher'")
    assert web.alive() and pids == {web.popen.pid}
    assert api.post("/agents/fresher/instances").status_code == 201  # the worker knows it too
    assert "Warm shutdown" not in worker.log() and "Restarting celery worker" not in worker.log()

    # A reload announced while a process was not listening still reaches it: the version in
    # Redis moves, and each process checks it.
    _agent(agents / "quiet.md", "quiet")
    redis.Redis.from_url(c.redis_url).incr("regina:registry:version")
    wait_until(lambda: listed("quiet"), timeout=30, interval=0.3, what="the web to follow the version")

    # A web that knows an agent the worker does not yet: the spawn makes the worker reload.
    _agent(agents / "late.md", "late")
    api.post("/admin/agents/reload")  # web reloads and announces; the worker may be slower
    assert api.post("/agents/late/instances").status_code == 201

    # A changed agent reaches its started instance at its next step (not once it is suspended or
    # moved): the model gets the new system prompt.
    path = agents / "openai-agent.md"
    path.write_text(path.read_text().replace("You are the openai test agent.", "You are the RELOADED agent."))
    assert api.post("/admin/agents/reload").status_code == 200

    def system_prompt_of_next_chat() -> str | None:
        api.post(f"/instances/{iid}/chat", json={"message": "which are you?"})
        system = fake_llm.requests[-1].messages[0]["content"]
        return system if "RELOADED" in system else None

    wait_until(system_prompt_of_next_chat, timeout=30, interval=0.5, what="the reloaded prompt in a started instance")
    assert api.get(f"/instances/{iid}").json()["status"] == "started"


def test_a_worker_on_another_machine_serves_its_own_metrics_on_metrics_port(
    make_cluster: Callable[..., Cluster],
) -> None:
    from tests.harness.ports import free_port

    port = free_port()
    c = make_cluster()
    c.start_worker(env={"REGINA_METRICS_PORT": str(port)})  # no PROMETHEUS_MULTIPROC_DIR: its own registry
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=60)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    for n in range(3):
        assert api.post(f"/instances/{iid}/chat", json={"message": f"m{n}"}).status_code == 200
    got = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    assert got[("regina_runs_total", (("mode", "sync"), ("outcome", "stop")))] == 3
    assert got[("regina_resumes_total", ())] == 1
    # The web's own page has its requests, not the worker's runs.
    web_page = samples(api.get("/metrics").text)
    assert ("regina_runs_total", (("mode", "sync"), ("outcome", "stop"))) not in web_page


def test_a_worker_killed_without_shutdown_leaves_no_gauges_in_metrics(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    """A worker killed -9 never runs its shutdown (`process_exited`): the scrape itself drops the
    live gauges of processes that are gone. Its counters' files stay (their counts still add up)."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    c = make_cluster(PROMETHEUS_MULTIPROC_DIR=str(shared))
    doomed, other = c.start_worker(wait=False), c.start_worker(wait=False)
    for proc in c.procs:
        c.wait_worker(proc)
    web = c.start_web()

    def members() -> set[str]:
        got = samples(httpx.get(web.url + "/metrics", timeout=10).text)
        return {dict(labels)["member"] for name, labels in got if name == "regina_worker_instances"}

    wait_until(lambda: members() == {doomed.member_id, other.member_id}, timeout=30, what="both workers' gauges")
    pid = doomed.popen.pid
    assert any(name.endswith(f"_{pid}.db") and not name.startswith("gauge_live") for name in os.listdir(shared))
    doomed.kill_group()
    assert members() == {other.member_id}
    assert not any(name.startswith("gauge_live") and name.endswith(f"_{pid}.db") for name in os.listdir(shared))
    assert any(name.endswith(f"_{pid}.db") for name in os.listdir(shared))  # its counters


def test_a_tool_call_is_labelled_by_the_instances_tools_not_by_its_error_text(
    make_cluster: Callable[..., Cluster], fake_llm: FakeLLM, tmp_path: Path
) -> None:
    """A call skipped because the run was cancelled gets a "cancelled" result, not "unknown tool":
    its made-up name must still not become a label (one series per invented name, for good)."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    c = make_cluster(PROMETHEUS_MULTIPROC_DIR=str(shared))
    c.start_worker()
    web = c.start_web()
    api = httpx.Client(base_url=web.url, timeout=60)
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    fake_llm.push(
        Reply(tool_calls=[ToolCall("bash", {"command": "sleep 8"}), ToolCall("made_up_tool_y", {})]),
        Reply(text="must not be asked"),
    )
    events = []
    with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": "go"}) as resp:
        run_id = resp.headers["X-Run-Id"]
        for line in resp.iter_lines():
            if line:
                events.append(json.loads(line))
                if events[-1]["type"] == "tool-call" and events[-1]["toolName"] == "bash":
                    assert api.post(f"/runs/{run_id}/cancel").status_code == 202
    assert events[-1]["type"] == "finish" and events[-1]["finishReason"] == "cancelled"
    results = {e["toolName"]: e["result"]["error"] for e in events if e["type"] == "tool-result"}
    assert results["made_up_tool_y"].startswith("cancelled: ") and "unknown tool" not in results["made_up_tool_y"]
    got = samples(api.get("/metrics").text)
    calls = {labels: value for (name, labels), value in got.items() if name == "regina_tool_calls_total"}
    assert calls == {(("outcome", "error"), ("tool", "bash")): 1, (("outcome", "error"), ("tool", "unknown")): 1}
