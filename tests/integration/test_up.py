"""`regina up` as a developer runs it: ready line, Ctrl-C to the process group, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.harness.fake_llm import FakeLLM, Reply, ToolCall
from tests.harness.lifeline import die_with_parent
from tests.harness.ports import free_port
from tests.harness.processes import REGINA, ROOT, clean_env
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.slow


class Up:
    """One `regina up` in its own process group, as a terminal runs it."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self.popen = subprocess.Popen(
            [REGINA, "up", *args],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> str:
        def ready() -> str | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"regina up exited:\n{self.text()[-4000:]}")
            line = next((x for x in self.text().splitlines() if x.startswith("regina up: ready")), None)
            return line

        return wait_until(ready, timeout=150, interval=0.05, what="regina up to be ready")

    def ctrl_c(self) -> int:
        os.killpg(self.popen.pid, signal.SIGINT)  # what the terminal does: the whole group
        return self.popen.wait(120)


def test_ready_then_ctrl_c_backs_up_and_a_quick_restart_serves_old_instances(fake_llm: FakeLLM, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env()
    env.update(
        PORT=str(port),
        REGINA_DATA_DIR=str(tmp_path / "data"),
        REGINA_AGENTS_DIR=str(ROOT / "tests" / "agents"),
        REGINA_VFS_DIR=str(tmp_path / "vfs"),
        REGINA_STORAGE__TYPE="fs",
        REGINA_STORAGE__BASE_PATH=str(tmp_path / "backups"),
        OPENAI_BASE_URL=fake_llm.url + "/v1",
        OPENAI_API_KEY="sk-test-openai",
    )
    api = f"http://127.0.0.1:{port}"
    first = Up(env, tmp_path / "up1.log")
    try:
        line = first.wait_ready()
        # The moment "ready" is printed a chat succeeds (no 503 "start one with regina up").
        iid = httpx.post(f"{api}/agents/openai-agent/instances", timeout=60).json()["instanceId"]
        assert (
            httpx.post(f"{api}/instances/{iid}/chat", json={"message": "first"}, timeout=60).json()["text"]
            == "echo: first"
        )
        url_file = tmp_path / "data" / "redis.url"
        redis_url = url_file.read_text().strip()
        assert line == f"regina up: ready  API {api}  docs {api}/docs  Redis {redis_url}  (Ctrl-C stops)"
        fake_llm.push(
            Reply(tool_calls=[ToolCall("write_file", {"path": "/kept.txt", "content": "kept"})]), Reply(text="ok")
        )
        assert httpx.post(f"{api}/instances/{iid}/chat", json={"message": "write"}, timeout=60).status_code == 200
    finally:
        code = first.ctrl_c()
    out = first.text()
    assert code == 0, out[-4000:]
    assert "Traceback" not in out and "suspend at shutdown failed" not in out, out[-6000:]
    assert "left the cluster (1 instance(s) suspended)" in out
    assert list((tmp_path / "backups").rglob("*")), "the shutdown backed the instance up"
    assert not url_file.exists()

    # Restart at once (well within memberTtl): the old instance answers, with its history and files.
    flower_port = free_port()
    second = Up(env, tmp_path / "up2.log", "--flower", "--flower-port", str(flower_port))
    try:
        second.wait_ready()
        flower = f"http://127.0.0.1:{flower_port}"
        wait_until(lambda: f"regina up: Flower {flower}; metrics {api}/metrics" in second.text(), what="Flower line")
        started = time.monotonic()
        answer = httpx.post(f"{api}/instances/{iid}/chat", json={"message": "again"}, timeout=60).json()
        # Not after memberTtl (30 s): the old members left. The first chat after "ready" also
        # waits for the workers' LiteLLM import, done after they joined (seconds on a busy machine).
        assert answer["text"] == "echo: again" and time.monotonic() - started < 25
        fake_llm.push(Reply(tool_calls=[ToolCall("read_file", {"path": "/kept.txt"})]), Reply(text="read"))
        events = [
            e
            for e in httpx.post(
                f"{api}/instances/{iid}/chat/stream", json={"message": "read"}, timeout=60
            ).text.splitlines()
        ]
        assert any('"tool-result"' in e and "kept" in e for e in events)
        contents = [m["content"] for m in httpx.get(f"{api}/instances/{iid}/messages", timeout=30).json()]
        assert contents[:2] == ["first", "echo: first"]
        wait_until(lambda: httpx.get(flower + "/healthcheck", timeout=2).text == "OK", timeout=60, what="Flower")
    finally:
        assert second.ctrl_c() == 0
    assert "Traceback" not in second.text()


def test_a_busy_port_is_a_clear_early_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**clean_env(), "REGINA_DATA_DIR": str(tmp_path / "data"), "REDIS_URL": "redis://127.0.0.1:1/0"}
        started = time.monotonic()
        done = subprocess.run([REGINA, "up", "--port", str(port)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is busy" in done.stderr
    assert "ready" not in done.stdout and time.monotonic() - started < 20


def _env(tmp_path: Path, fake_llm: FakeLLM, port: int) -> dict[str, str]:
    env = clean_env()
    env.update(
        PORT=str(port),
        REGINA_DATA_DIR=str(tmp_path / "data"),
        REGINA_AGENTS_DIR=str(ROOT / "tests" / "agents"),
        REGINA_VFS_DIR=str(tmp_path / "vfs"),
        OPENAI_BASE_URL=fake_llm.url + "/v1",
        OPENAI_API_KEY="sk-test-openai",
    )
    return env


def test_closing_the_terminal_sighup_stops_everything_in_order(fake_llm: FakeLLM, tmp_path: Path) -> None:
    up = Up(_env(tmp_path, fake_llm, free_port()), tmp_path / "up.log")
    try:
        up.wait_ready()
        os.kill(up.popen.pid, signal.SIGHUP)
        assert up.popen.wait(90) == 0, up.text()[-3000:]
        assert "regina up: stopped" in up.text()
        assert not (tmp_path / "data" / "redis.url").exists()
    finally:
        if up.popen.poll() is None:
            os.killpg(up.popen.pid, signal.SIGKILL)


def test_a_second_up_on_the_same_data_dir_is_refused(fake_llm: FakeLLM, tmp_path: Path) -> None:
    first = Up(_env(tmp_path, fake_llm, free_port()), tmp_path / "up1.log")
    try:
        first.wait_ready()
        url_file = tmp_path / "data" / "redis.url"
        url = url_file.read_text()
        second = Up(_env(tmp_path, fake_llm, free_port()), tmp_path / "up2.log")
        try:
            assert second.popen.wait(30) != 0, second.text()[-3000:]
        finally:
            if second.popen.poll() is None:
                os.killpg(second.popen.pid, signal.SIGKILL)
        assert "another `regina up` is running on the data dir" in second.text(), second.text()[-3000:]
        assert url_file.read_text() == url
        assert first.ctrl_c() == 0
    finally:
        if first.popen.poll() is None:
            os.killpg(first.popen.pid, signal.SIGKILL)
