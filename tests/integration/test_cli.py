"""The client CLI (SPEC §9) against a live cluster: real `regina` processes, real HTTP."""

from __future__ import annotations

import subprocess

import httpx

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import REGINA, Cluster, clean_env


def regina(api: httpx.Client, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `regina <args>` pointed at the cluster through REGINA_URL (not a TTY: plain output)."""
    return subprocess.run(
        [REGINA, *args],
        env={**clean_env(), "REGINA_URL": str(api.base_url), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chat_spawns_prints_the_id_and_streams_tool_lines(api: httpx.Client, fake_llm: FakeLLM) -> None:
    fake_llm.push(
        Reply(tool_calls=[ToolCall("write_file", {"path": "/notes.txt", "content": "one\ntwo\nthree\n"})]),
        Reply(tool_calls=[ToolCall("bash", {"command": "cat /notes.txt"})]),
        Reply(text="the file has three lines"),
    )
    out = regina(api, "chat", "openai-agent", "write and read notes")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("instance openai-agent-")
    iid = lines[0].split()[1]
    assert lines[1].startswith('→ write_file {"path": "/notes.txt"')
    assert lines[2].startswith("← ")
    assert lines[3] == '→ bash {"command": "cat /notes.txt"}'
    assert lines[4] == '← {"stdout": "one\\ntwo\\nthree\\n", "stderr": "", "exitCode": 0}'
    assert lines[5] == "the file has three lines"
    assert api.get(f"/instances/{iid}").json()["status"] == "started"

    # An instance id chats with that instance (no new spawn), then the fleet shows it.
    again = regina(api, "chat", iid, "hello")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "echo: hello\n"
    ps = regina(api, "ps")
    row = next(line for line in ps.stdout.splitlines() if line.startswith(iid))
    assert "openai-agent" in row and "started" in row

    assert regina(api, "steer", iid, "later").returncode == 0
    assert regina(api, "suspend", iid).stdout == f"suspended {iid}\n"
    assert api.get(f"/instances/{iid}").json()["status"] == "suspended"
    assert regina(api, "resume", iid).returncode == 0
    assert api.get(f"/instances/{iid}").json()["status"] == "started"
    assert regina(api, "rm", iid).returncode == 0
    assert api.get(f"/instances/{iid}").status_code == 404


def test_api_errors_exit_1_with_the_message_on_stderr(api: httpx.Client) -> None:
    out = regina(api, "chat", "openai-agent-" + "0" * 24, "hi")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("regina: ") and "not found" in out.stderr
    unknown = regina(api, "chat", "no-such-agent", "hi")
    assert unknown.returncode == 1 and "no-such-agent" in unknown.stderr
    down = regina(api, "ps", "--url", "http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_agents_reload_and_help(api: httpx.Client) -> None:
    out = regina(api, "agents")
    assert out.returncode == 0
    assert any(line.split()[0] == "tool-agent" for line in out.stdout.splitlines()[1:])
    reload = regina(api, "reload")
    assert reload.returncode == 0 and "tool-agent" in reload.stdout
    for command in ("chat", "ps", "steer", "rm", "up", "web", "worker", "flower"):
        shown = regina(api, command, "--help")
        assert shown.returncode == 0 and "Usage: regina " + command in shown.stdout


def test_a_set_regina_url_and_token_are_not_server_settings(cluster: Cluster) -> None:
    """REGINA_URL / REGINA_TOKEN belong to the client: `regina web` still starts with them set."""
    web = cluster.start_web(env={"REGINA_URL": "http://elsewhere:1", "REGINA_TOKEN": "t"})
    try:
        assert httpx.get(web.url + "/healthz", timeout=5).status_code == 200
    finally:
        web.stop()
        cluster.procs.remove(web)


def test_a_missing_provider_key_is_warned_at_start_and_shown_by_agents(cluster: Cluster) -> None:
    web = cluster.start_web(env={"OPENAI_API_KEY": ""})
    try:
        agents = {a["id"]: a for a in httpx.get(web.url + "/agents", timeout=10).json()}
        assert agents["openai-agent"]["ready"] is False
        assert agents["openai-agent"]["missingKey"] == "OPENAI_API_KEY"
        assert agents["anthropic-agent"]["ready"] is True and "missingKey" not in agents["anthropic-agent"]
        assert "sk-test" not in str(agents)
        log = web.log()
        assert "WARNING" in log and "agent 'openai-agent' (model gpt-4o): OPENAI_API_KEY is not set" in log
        listed = subprocess.run(
            [REGINA, "agents"], env={**clean_env(), "REGINA_URL": web.url}, capture_output=True, text=True, timeout=60
        )
        row = next(line for line in listed.stdout.splitlines() if line.startswith("openai-agent\t"))
        assert row.endswith("no: OPENAI_API_KEY not set")
    finally:
        web.stop()
        cluster.procs.remove(web)


def test_each_run_is_one_log_line_and_a_model_error_a_warning_naming_provider_and_model(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    import re

    from tests.harness.waiting import wait_until

    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    ok = api.post(f"/instances/{iid}/chat", json={"message": "fine"})
    fake_llm.push(Reply(error_status=401, error_message="bad key"))
    failed_run = api.post(f"/instances/{iid}/chat", json={"message": "fails"}).headers["X-Run-Id"]
    ok_run = ok.headers["X-Run-Id"]
    logs = lambda: "".join(p.log() for p in cluster.procs if p.name.startswith("worker"))  # noqa: E731
    line = wait_until(
        lambda: next((x for x in logs().splitlines() if f"run {ok_run} instance {iid} stop:" in x), None),
        timeout=20,
        what="the run's log line",
    )
    assert re.search(
        r" INFO +worker\[\d+\] regina\.run: run run-\w+ instance .+ stop: 1 step\(s\), \d+\+\d+ tokens", line
    )
    warning = wait_until(
        lambda: next(
            (x for x in logs().splitlines() if f"run {failed_run} model error (provider openai, model gpt-4o)" in x),
            None,
        ),
        timeout=20,
        what="the model error warning",
    )
    assert " WARNING worker[" in warning and ("401" in warning or "bad key" in warning)
