"""The client CLI (SPEC §9) against a live cluster: real `regina` processes, real HTTP."""

from __future__ import annotations

import concurrent.futures as cf
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.processes import REGINA, Cluster, clean_env
from tests.harness.waiting import wait_until


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

    steered = regina(api, "steer", iid, "later")
    assert steered.returncode == 0, steered.stderr
    assert re.fullmatch(rf"steering message queued for {iid} \(steer-\w+\)\n", steered.stdout), steered.stdout
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


def test_url_and_token_go_before_or_after_the_command(api: httpx.Client) -> None:
    """SPEC §9's `--url` / `--token` are the client's: before the command too (`regina --url … ps`);
    the command's own wins over the group's, which wins over REGINA_URL."""
    url, nowhere = str(api.base_url), "http://127.0.0.1:9"
    before = regina(api, "--url", url, "agents", REGINA_URL=nowhere)
    assert before.returncode == 0 and "tool-agent" in before.stdout, before.stderr
    after = regina(api, "--url", nowhere, "agents", "--url", url)
    assert after.returncode == 0 and "tool-agent" in after.stdout, after.stderr
    down = regina(api, "--url", nowhere, "agents")
    assert down.returncode == 1 and "cannot reach" in down.stderr
    token = regina(api, "--token", "bad\nline", "agents")  # the group's token reaches the client
    assert token.returncode == 1 and "token" in token.stderr and "bad" not in token.stderr, token.stderr


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


def _fleet_of(api: httpx.Client, agent: str) -> dict[str, dict[str, object]]:
    items = api.get("/instances", params={"agent": agent, "limit": 1000}).json()
    return {i["instanceId"]: i for i in items}


def test_ps_lists_every_page_of_the_fleet_and_an_agents_instances_with_member_and_last_active(
    api: httpx.Client,
) -> None:
    # Given more instances than one page of GET /instances (100)
    with cf.ThreadPoolExecutor(8) as pool:
        mine = set(pool.map(lambda _: api.post("/agents/helper-agent/instances").json()["instanceId"], range(101)))
    try:
        # Then `ps` lists them all
        out = regina(api, "ps")
        assert out.returncode == 0, out.stderr
        shown = {line.split("\t")[0] for line in out.stdout.splitlines()[1:]}
        assert mine <= shown, f"{len(mine - shown)} of {len(mine)} instances missing"
        # And `ps --agent` shows only that agent's, each with its member and last activity
        by_agent = regina(api, "ps", "--agent", "helper-agent")
        assert by_agent.returncode == 0, by_agent.stderr
        lines = by_agent.stdout.splitlines()
        assert lines[0].split("\t") == ["ID", "AGENT", "STATUS", "MEMBER", "LAST ACTIVE"]
        rows = {cols[0]: cols for cols in (line.split("\t") for line in lines[1:])}
        assert set(rows) == set(_fleet_of(api, "helper-agent")) and mine <= set(rows)
        fleet = _fleet_of(api, "helper-agent")
        for iid in mine:
            assert rows[iid][1:] == ["helper-agent", "started", fleet[iid]["member"], fleet[iid]["lastActive"]]
    finally:
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda iid: api.delete(f"/instances/{iid}"), mine))


@contextmanager
def not_regina() -> Iterator[str]:
    """An HTTP server that answers every request with a 200 HTML page (another service on the port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>not regina</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_bad_url_or_an_answer_that_is_not_json_is_a_message_not_a_traceback(api: httpx.Client) -> None:
    bad = regina(api, "agents", "--url", "http://127.0.0.1:abc")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("regina: ") and "abc" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    with not_regina() as url:
        for command in ("agents", "ps"):
            out = regina(api, command, "--url", url)
            assert out.returncode == 1 and out.stdout == "", out
            assert out.stderr.startswith("regina: ") and "not the Regina API" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr


def test_ctrl_c_during_chat_cancels_the_run_on_the_server_and_exits_130(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    # For this chat's request only: a reply queued for "the next request" could go to another's.
    marker = f"think long {iid}"
    fake_llm.push_for(marker, Reply(text="too late", delay=30))
    proc = subprocess.Popen(
        [REGINA, "chat", iid, marker],
        env={**clean_env(), "REGINA_URL": str(api.base_url)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As from a terminal: a suite started in the background (`make test &`, nohup) has SIGINT
        # ignored, which its children inherit, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until(  # the run is waiting on the model
            lambda: any(r.last_user_text == marker for r in fake_llm.requests), timeout=30, what="the model call"
        )
        run_id = _fleet_of(api, "openai-agent")[iid]["runningRun"]
        assert run_id
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"regina chat did not exit after Ctrl-C:\n{out}\n{err}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert err.strip().endswith(f"cancelled run {run_id}") and "Traceback" not in err, err
    assert api.get(f"/runs/{run_id}").json()["status"] == "cancelled"
    assert api.post(f"/instances/{iid}/chat", json={"message": "next"}).json()["text"] == "echo: next"
    api.delete(f"/instances/{iid}")


def test_chat_checks_the_message_before_spawning_and_removes_what_it_spawned_for_a_refused_chat(
    api: httpx.Client, cluster: Cluster
) -> None:
    before = set(_fleet_of(api, "openai-agent"))
    for message in ("", "  \n"):
        empty = regina(api, "chat", "openai-agent", message)
        assert empty.returncode == 1 and empty.stdout == ""
        assert empty.stderr == "regina: the message must not be empty\n"
    assert set(_fleet_of(api, "openai-agent")) == before
    # A message the server refuses (413 from a web whose limit is 20 characters) after the spawn
    web = cluster.start_web(env={"REGINA_LIMITS__MAX_MESSAGE_CHARS": "20"})
    try:
        out = regina(api, "chat", "openai-agent", "x" * 30, REGINA_URL=web.url)
    finally:
        web.stop()
        cluster.procs.remove(web)
    assert out.returncode == 1 and out.stdout.startswith("instance openai-agent-"), out
    iid = out.stdout.split()[1]
    assert f"deleted instance {iid}" in out.stderr and "the limit is 20" in out.stderr, out.stderr
    assert api.get(f"/instances/{iid}").status_code == 404
    assert set(_fleet_of(api, "openai-agent")) == before


def test_an_id_is_one_path_segment_it_cannot_reach_another_instance(api: httpx.Client) -> None:
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    try:
        out = regina(api, "rm", f"x/../{iid}")
        assert out.returncode == 1 and out.stderr.startswith("regina: ") and "Traceback" not in out.stderr, out
        assert api.get(f"/instances/{iid}").json()["status"] == "started"
    finally:
        api.delete(f"/instances/{iid}")


def test_suspend_resume_rm_go_through_every_id_and_report_each_failure(api: httpx.Client) -> None:
    first, second = (api.post("/agents/openai-agent/instances").json()["instanceId"] for _ in range(2))
    missing = "openai-agent-" + "0" * 24
    try:
        out = regina(api, "suspend", missing, first, "x/y", second)
        assert out.returncode == 1, out
        assert out.stdout == f"suspended {first}\nsuspended {second}\n", out.stdout
        errs = out.stderr.splitlines()
        assert errs[0].startswith(f"regina: {missing}: ") and "not found" in errs[0], errs
        assert errs[1].startswith("regina: x/y: ") and errs[2] == "regina: 2 of 4 failed", errs
        assert all(api.get(f"/instances/{i}").json()["status"] == "suspended" for i in (first, second))
        done = regina(api, "rm", first, second)
        assert done.returncode == 0 and done.stderr == "", done
    finally:
        api.delete(f"/instances/{first}")
        api.delete(f"/instances/{second}")


def test_up_is_ready_only_once_one_of_its_own_workers_joined(cluster: Cluster) -> None:
    """A member left behind by a `regina up` killed with -9 looks live to /healthz?ready=1 until
    memberTtl; `regina up` must not print "ready" on its account (chats placed there would wait)."""
    from regina.cli.up import is_ready
    from regina.redis_conn import connect

    client = connect(cluster.redis_url, concurrency=1)
    url = cluster.web.url
    assert httpx.get(url + "/healthz", params={"ready": "1"}).status_code == 200  # other members are live
    assert not is_ready(url, client, ["up1-gone@nowhere"])
    assert is_ready(url, client, ["up1-gone@nowhere", cluster.workers[0].member_id])
    assert not is_ready("http://127.0.0.1:9", client, [cluster.workers[0].member_id])  # no API yet


def test_chat_prints_model_text_with_line_separators_whole(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """U+2028, U+2029 and U+0085 come unescaped inside the stream's JSON strings: not line ends."""
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    text = "x\u2028y \u2029z \x85w end"
    fake_llm.push_for(f"separators {iid}", Reply(text=text))
    out = regina(api, "chat", iid, f"separators {iid}")
    api.delete(f"/instances/{iid}")
    assert out.returncode == 0 and out.stderr == "", out
    assert out.stdout == text + "\n", out.stdout


def test_chat_prints_model_text_as_is_no_emoji_codes_or_markup_replaced(api: httpx.Client, fake_llm: FakeLLM) -> None:
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    text = "say :smile: and :thumbs_up: [bold]not bold[/bold] 1.5 http://x.y/ 'quoted'"
    fake_llm.push_for(f"shortcodes {iid}", Reply(text=text))
    out = regina(api, "chat", iid, f"shortcodes {iid}")
    api.delete(f"/instances/{iid}")
    assert out.returncode == 0 and out.stderr == "", out
    assert out.stdout == text + "\n", out.stdout


def test_suspend_says_suspending_when_the_server_is_still_finishing_a_step(
    api: httpx.Client, cluster: Cluster, fake_llm: FakeLLM
) -> None:
    """A suspend the owner has not confirmed within workerReplyTimeout is answered 202
    {"status": "suspending"}: neither the client nor `regina suspend` calls it suspended."""
    from regina.client import ReginaClient

    web = cluster.start_web(env={"REGINA_LIMITS__WORKER_REPLY_TIMEOUT": "1"})
    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    try:
        with ReginaClient(web.url) as client:
            assert client.suspend(iid) == {"instanceId": iid, "status": "suspended"}  # 204: done
            client.resume(iid)
            for how in ("client", "cli"):
                marker = f"busy {how} {iid}"
                fake_llm.push_for(marker, Reply(text="late", delay=6))
                with api.stream("POST", f"/instances/{iid}/chat/stream", json={"message": marker}) as started:
                    run_id = started.headers["X-Run-Id"]  # the run goes on without this connection
                wait_until(
                    lambda m=marker: any(r.last_user_text == m for r in fake_llm.requests),  # type: ignore[misc]
                    timeout=30,
                    what=marker,
                )
                if how == "client":
                    assert client.suspend(iid) == {"instanceId": iid, "status": "suspending"}
                else:
                    out = regina(api, "suspend", iid, REGINA_URL=web.url)
                    assert out.returncode == 0 and out.stderr == "", out
                    assert out.stdout == f"suspending {iid} (after its running step)\n", out.stdout
                api.post(f"/runs/{run_id}/cancel")
                wait_until(
                    lambda: api.get(f"/instances/{iid}").json()["status"] == "suspended", timeout=30, what="suspended"
                )
                client.resume(iid)
    finally:
        web.stop()
        cluster.procs.remove(web)
        api.delete(f"/instances/{iid}")


#: A command-line argument that is not UTF-8 ($'\x85' in bash): Python keeps the byte as U+DC85.
NOT_UTF8 = "\udc85"


def test_an_argument_that_is_not_utf8_is_refused_before_any_request(api: httpx.Client) -> None:
    from regina import client as c
    from regina import errors

    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    before = set(_fleet_of(api, "openai-agent"))
    try:
        for args in (
            ("chat", "openai-agent", NOT_UTF8),  # would spawn an instance first
            ("chat", "openai-agent", "hi " + NOT_UTF8),
            ("chat", iid, NOT_UTF8),
            ("chat", "agent" + NOT_UTF8, "hi"),
            ("steer", iid, NOT_UTF8),
            ("rm", iid, NOT_UTF8),
            ("suspend", NOT_UTF8),
            ("ps", "--agent", NOT_UTF8),
        ):
            out = regina(api, *args)
            assert out.returncode == 1 and out.stdout == "", (args, out)
            assert out.stderr.startswith("regina: ") and "is not UTF-8 text (byte 0x85 at character" in out.stderr, out
            assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
        assert set(_fleet_of(api, "openai-agent")) == before  # no instance spawned for a refused chat
        assert api.get(f"/instances/{iid}").json()["status"] == "started"  # not removed by `rm iid <bad>`
        # The client refuses such text with its own error, before sending anything
        with c.ReginaClient(str(api.base_url)) as regina_client:
            for call in (
                lambda: regina_client.chat(iid, NOT_UTF8),
                lambda: list(regina_client.stream(iid, NOT_UTF8)),
                lambda: regina_client.steer(iid, "x" + NOT_UTF8),
                lambda: regina_client.spawn(NOT_UTF8),
                lambda: regina_client.delete(NOT_UTF8),
                lambda: list(regina_client.fleet(agent=NOT_UTF8)),
                lambda: regina_client.chat(iid, "hi", idempotency_key=NOT_UTF8),
            ):
                with pytest.raises(c.InvalidArgument, match="not UTF-8 text|Idempotency-Key") as refused:
                    call()
                assert isinstance(refused.value, errors.BadRequest) and refused.value.status == 0
        assert api.get(f"/instances/{iid}/messages").json() == []
    finally:
        api.delete(f"/instances/{iid}")


def test_ctrl_c_before_the_run_id_arrived_still_cancels_the_chats_run(api: httpx.Client, fake_llm: FakeLLM) -> None:
    """The run exists on the server before its X-Run-Id header reaches `regina chat` (here a slow
    link holds the answer back): Ctrl-C then finds the chat's run by the chat's own
    Idempotency-Key and cancels it, instead of saying the run had not started."""
    from tests.harness.delay_proxy import DelayProxy

    iid = api.post("/agents/openai-agent/instances").json()["instanceId"]
    marker = f"think long unseen {iid}"
    fake_llm.push_for(marker, Reply(text="too late", delay=30))
    port = int(str(api.base_url).rsplit(":", 1)[1].strip("/"))
    with DelayProxy("127.0.0.1", port) as proxy:
        proxy.delay = 120  # the chat's answer (its headers too) is held back
        proc = subprocess.Popen(
            [REGINA, "chat", iid, marker],
            env={**clean_env(), "REGINA_URL": proxy.url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
        )
        try:
            wait_until(
                lambda: any(r.last_user_text == marker for r in fake_llm.requests), timeout=30, what="the model call"
            )
            run_id = _fleet_of(api, "openai-agent")[iid]["runningRun"]
            assert run_id
            proxy.delay = 0  # what Ctrl-C sends next gets through
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert err.strip().endswith(f"cancelled run {run_id}") and "Traceback" not in err, err
    assert api.get(f"/runs/{run_id}").json()["status"] == "cancelled"
    messages = api.get(f"/instances/{iid}/messages").json()
    assert [m["content"] for m in messages if m["role"] == "user"] == [marker]  # one run, not two
    api.delete(f"/instances/{iid}")
