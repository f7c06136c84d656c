"""The client and the client CLI against a stand-in HTTP server that records what it was asked and
answers what a test sets (a proxy's HTML page, a 429, an odd spawn answer): what a real cluster
cannot be made to say on demand. No part of Regina is replaced: the client and `regina` are real."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from regina import client as c
from regina import errors
from tests.harness.processes import REGINA, clean_env


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0


def json_answer(value: object, status: int = 200, **headers: str) -> Answer:
    return Answer(status, json.dumps(value).encode(), {"Content-Type": "application/json", **headers})


@dataclass
class StandIn:
    """The server: `answer(method, path)` says what to send; `asked` lists (method, raw path)."""

    url: str
    asked: list[tuple[str, str]]
    answer: Callable[[str, str], Answer]


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    asked: list[tuple[str, str]] = []
    state = StandIn("", asked, lambda method, path: json_answer({}))

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            asked.append((self.command, self.path))
            answer = state.answer(self.command, self.path)
            time.sleep(answer.delay)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = do_DELETE = _any

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False  # a test's slow answer does not hold up the next test
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REGINA, *args], env={**clean_env(), "REGINA_URL": url}, capture_output=True, text=True, timeout=60
    )


def test_ids_are_one_quoted_path_segment_and_none_or_empty_is_refused(stand_in: StandIn) -> None:
    with c.ReginaClient(stand_in.url) as regina:
        regina.run("bad id/../x")
        regina.cancel("r?x#y")
        regina.delete("x/../demo-1")
        regina.spawn("../admin/agents/reload?")
        regina.instances("a/b")
        for bad in (None, "", ".", ".."):
            with pytest.raises(c.InvalidURL, match="must be a non-empty string"):
                regina.cancel(bad)  # type: ignore[arg-type]
            with pytest.raises(errors.ReginaError, match="instance id"):
                regina.chat(bad, "hi")  # type: ignore[arg-type]
    assert stand_in.asked == [
        ("GET", "/runs/bad%20id%2F..%2Fx"),
        ("POST", "/runs/r%3Fx%23y/cancel"),
        ("DELETE", "/instances/x%2F..%2Fdemo-1"),
        ("POST", "/agents/..%2Fadmin%2Fagents%2Freload%3F/instances"),
        ("GET", "/agents/a%2Fb/instances"),
    ]
    out = run_cli(stand_in.url, "chat", "../admin/agents/reload?", "hi")
    assert ("POST", "/admin/agents/reload") not in stand_in.asked
    assert stand_in.asked[-1] == ("POST", "/agents/..%2Fadmin%2Fagents%2Freload%3F/instances"), out


def test_chat_says_so_when_the_spawn_answer_names_no_instance(stand_in: StandIn) -> None:
    for answer in ({}, [], {"instanceId": None}, "text"):
        stand_in.answer = lambda method, path, answer=answer: json_answer(answer, 201)  # type: ignore[misc]
        out = run_cli(stand_in.url, "chat", "demo", "hi")
        assert out.returncode == 1 and out.stdout == "", out
        assert out.stderr.startswith("regina: the server's answer to spawning 'demo' names no instance"), out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr


PROXY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>nginx</body></html>"


def test_every_error_carries_its_status_and_a_page_that_is_not_the_apis_json_is_bad_response(
    stand_in: StandIn,
) -> None:
    answers = {
        "/runs/r500": json_answer({"error": "internal error: KeyError (details in the server log)"}, 500),
        "/runs/r405": json_answer({"error": "method not allowed: x"}, 405),
        "/runs/r404": json_answer({"error": "run not found"}, 404),
        "/runs/r502": Answer(502, PROXY_PAGE, {"Content-Type": "text/html"}),
        "/runs/r503": Answer(503, b"", {}),
    }
    stand_in.answer = lambda method, path: answers.get(path, answers["/runs/r502"])
    with c.ReginaClient(stand_in.url) as regina:
        for run_id, status in (("r500", 500), ("r405", 405), ("r404", 404)):
            with pytest.raises(c.ClientError) as raised:
                regina.run(run_id)
            assert raised.value.status == status and "error" in raised.value.body, raised.value
        assert isinstance(raised.value, c.NotFound) and raised.value.message == "run not found"
        for run_id, status in (("r502", 502), ("r503", 503)):
            with pytest.raises(c.BadResponse, match="not the Regina API's JSON") as bad:
                regina.run(run_id)
            assert bad.value.status == status
        assert "502 Bad Gateway" in bad.value.message or run_id == "r503"
    with c.ReginaClient(stand_in.url) as regina, pytest.raises(c.BadResponse) as page:
        regina.run("r502")
    assert "<" not in page.value.message and "an HTML page ('502 Bad Gateway')" in page.value.message
    out = run_cli(stand_in.url, "chat", "openai-agent-" + "0" * 24, "hi")  # a stream's error answer too
    assert out.returncode == 1 and "not the Regina API's JSON" in out.stderr and "<" not in out.stderr, out


def test_a_429_is_the_core_too_many_requests_with_retry_after(stand_in: StandIn) -> None:
    full = {"error": "instance has 2 runs waiting (limits.maxQueuedRuns)"}
    stand_in.answer = lambda method, path: json_answer(full, 429, **{"Retry-After": "7"})
    with c.ReginaClient(stand_in.url) as regina:
        with pytest.raises(errors.TooManyRequests) as raised:
            regina.chat("openai-agent-" + "0" * 24, "hi")
        assert isinstance(raised.value, c.TooManyRequests) and raised.value.retry_after == 7
        assert raised.value.status == 429 and raised.value.message == full["error"]
        stand_in.answer = lambda method, path: json_answer(full, 429)
        with pytest.raises(c.TooManyRequests) as unsaid:
            regina.steer("openai-agent-" + "0" * 24, "hi")
        assert unsaid.value.retry_after == 1


def test_a_url_that_is_not_http_is_invalid_url_not_cannot_reach() -> None:
    for url in ("localhost:3000", "ftp://x", "", "127.0.0.1"):
        for make in (c.ReginaClient, c.AsyncReginaClient):
            with pytest.raises(c.InvalidURL, match="must start with http:// or https://"):
                make(url)
        out = run_cli(url, "agents", "--url", url)
        assert out.returncode == 1 and "must start with http:// or https://" in out.stderr, out


def test_a_stream_to_a_server_that_cannot_be_reached_says_cannot_reach() -> None:
    iid = "openai-agent-" + "0" * 24
    with c.ReginaClient("http://127.0.0.1:1") as regina, pytest.raises(c.ConnectionFailed) as raised:
        list(regina.stream(iid, "hi"))
    assert raised.value.message.startswith("cannot reach http://127.0.0.1:1"), raised.value
    out = run_cli("http://127.0.0.1:1", "chat", iid, "hi")
    assert out.returncode == 1 and out.stderr.startswith("regina: cannot reach http://127.0.0.1:1"), out


def test_ctrl_c_while_chat_spawns_exits_130_with_a_message(stand_in: StandIn) -> None:
    stand_in.answer = lambda method, path: Answer(201, b'{"instanceId": "demo-1"}', delay=30)
    proc = subprocess.Popen(
        [REGINA, "chat", "demo", "hi"],
        env={**clean_env(), "REGINA_URL": stand_in.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal
    )
    try:
        deadline = time.monotonic() + 30
        while not stand_in.asked and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stand_in.asked == [("POST", "/agents/demo/instances")]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert (
        err == "regina: interrupted while spawning; an instance of demo may have been created "
        "(regina ps --agent demo)\n"
    ), err
    assert out == ""


def test_reload_names_each_skipped_file_once(stand_in: StandIn) -> None:
    skipped = {"file": "/srv/agents/bad.md", "error": "/srv/agents/bad.md: frontmatter: 'model' is required"}
    stand_in.answer = lambda method, path: json_answer({"agents": ["demo"], "errors": [skipped]})
    out = run_cli(stand_in.url, "reload")
    assert out.returncode == 0 and out.stdout == "1 agent(s): demo\n", out
    assert out.stderr == "skipped: /srv/agents/bad.md: frontmatter: 'model' is required\n", out.stderr


def test_a_stream_is_sent_when_read_and_knows_its_run_before_the_first_event(stand_in: StandIn) -> None:
    """As the README says: nothing is sent by stream() itself; run_id comes with the headers."""
    event = {"type": "finish", "finishReason": "stop", "text": "ok", "seq": 1, "runId": "run-1"}
    stand_in.answer = lambda method, path: Answer(
        200, json.dumps(event).encode() + b"\n", {"Content-Type": "application/x-ndjson", "X-Run-Id": "run-1"}
    )
    with c.ReginaClient(stand_in.url) as regina:
        stream = regina.stream("openai-agent-" + "0" * 24, "hi")
        assert stream.run_id is None and stand_in.asked == []
        assert next(stream) == event and stream.run_id == "run-1"
    assert stand_in.asked == [("POST", "/instances/openai-agent-000000000000000000000000/chat/stream")]


def test_an_answer_of_another_shape_is_bad_response_and_the_cli_says_so(stand_in: StandIn) -> None:
    odd_agents: list[object] = [{"agents": []}, ["demo"], [None], "text", 3]
    odd_reloads: list[object] = [[], {"agents": "demo"}, {"agents": [1]}, {"agents": [], "errors": ["x"]}, "x"]
    odd_fleets: list[object] = [["demo-1"], [{"status": "started"}], [{"instanceId": 5}]]
    with c.ReginaClient(stand_in.url) as regina:
        for calls, answers in (
            ((regina.agents,), odd_agents),
            ((regina.reload,), odd_reloads),
            ((lambda: list(regina.fleet()), regina.instances), odd_fleets),
        ):
            for answer in answers:
                stand_in.answer = lambda method, path, answer=answer: json_answer(answer)  # type: ignore[misc]
                for call in calls:
                    with pytest.raises(c.BadResponse, match="not the Regina API's JSON"):
                        call()  # type: ignore[operator]
    for command, answers in (("agents", odd_agents), ("reload", odd_reloads), ("ps", odd_fleets)):
        for answer in answers:
            stand_in.answer = lambda method, path, answer=answer: json_answer(answer)  # type: ignore[misc]
            out = run_cli(stand_in.url, command)
            assert out.returncode == 1 and out.stdout == "", (command, answer, out)
            assert out.stderr.startswith("regina: ") and "not the Regina API's JSON" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    # Fields of another type in an answer of the right shape are shown as they are
    stand_in.answer = lambda method, path: json_answer([{"id": "demo", "tools": [1, None], "model": 5}])
    listed = run_cli(stand_in.url, "agents")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1] == "demo\t-\t5\t1,None\tyes", listed
    stand_in.answer = lambda method, path: json_answer([{"instanceId": "demo-1", "status": 5, "member": 1.5}])
    fleet = run_cli(stand_in.url, "ps")
    assert fleet.returncode == 0 and fleet.stdout.splitlines()[1] == "demo-1\t-\t5\t1.5\t-", fleet


def test_a_bad_token_or_server_url_is_said_up_front_not_blamed_on_the_network(stand_in: StandIn) -> None:
    port = stand_in.url.rsplit(":", 1)[1]
    for token in ("é", "a\nb", "a\r\nX-Evil: 1", "two words", "\udc85"):
        for make in (c.ReginaClient, c.AsyncReginaClient):
            with pytest.raises(c.InvalidArgument, match="token must be visible ASCII") as raised:
                make(stand_in.url, token=token)
            assert token not in raised.value.message
        out = run_cli(stand_in.url, "agents", "--token", token)
        assert out.returncode == 1 and out.stdout == "", out
        assert out.stderr == "regina: the token must be visible ASCII characters (no spaces or line breaks)\n", out
    for url in (
        "http://a..b/",
        "http://",
        "http:///agents",
        f"http://127.0.0.1:{port}99/",
        "http://a b/",
        "http://é..x/",
    ):
        for make in (c.ReginaClient, c.AsyncReginaClient):
            with pytest.raises(c.InvalidURL, match="server URL"):
                make(url)
        out = run_cli(url, "agents", "--url", url)
        assert out.returncode == 1 and out.stdout == "", (url, out)
        assert out.stderr.startswith("regina: the server URL") and "cannot reach" not in out.stderr, (url, out)
        assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    assert stand_in.asked == []
    with c.ReginaClient(stand_in.url, token="tok-1.2_3~+/=") as regina:  # a token of every allowed kind works
        regina.instance("demo-1")
    assert stand_in.asked == [("GET", "/instances/demo-1")]
