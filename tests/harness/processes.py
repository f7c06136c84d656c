"""Start and stop real web and worker processes for integration tests.

Workers are `regina worker` (Celery, gevent pool); web is `regina web` (gunicorn, gevent).
Each process logs to a file; `Cluster.dump_logs()` prints them when a test fails. Each starts in
a session (so a process group) of its own, as a supervisor would start it: `Proc.kill_group()`
kills it with everything it started (tool processes, their fork server), like a machine dying.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from tests.harness.lifeline import die_with_parent
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
REGINA = str(Path(sys.executable).parent / "regina")


#: What a worker logs when its imports after joining are done (or failed).
PRELOAD_DONE = ("LiteLLM and the MCP SDK imported", "importing LiteLLM or the MCP SDK failed")


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without real API keys or REGINA_* settings of the developer's shell."""
    env = {
        k: v
        for k, v in (base or os.environ).items()
        if not k.endswith("_API_KEY")
        and not k.startswith("REGINA_")
        and not k.endswith("_BASE_URL")
        and k not in ("REDIS_URL", "PORT")
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Proc:
    """One child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    member_id: str = ""
    url: str = ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait (graceful: workers finish steps and back up); kill if it must."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return int(self.popen.returncode)

    def kill(self) -> None:
        """kill -9: no cleanup at all."""
        if self.alive():
            self.popen.kill()
            self.popen.wait()

    def kill_group(self) -> list[int]:
        """kill -9 of the process group: the process and every process it started die at once.
        Returns the pids that were in the group (each one is gone when this returns)."""
        pgid = os.getpgid(self.popen.pid)
        assert pgid == self.popen.pid, f"{self.name} does not lead a process group of its own"
        members = _group_members(pgid)
        os.killpg(pgid, signal.SIGKILL)
        self.popen.wait()
        wait_until(lambda: not any(_running(pid) for pid in members), timeout=10, what=f"{self.name}'s group to die")
        return members

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    """Web and worker processes sharing one Redis, the fake LLM and a temp dir."""

    redis_url: str
    fake_url: str
    env_overrides: dict[str, str] = field(default_factory=dict)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="regina-cluster-")))
    procs: list[Proc] = field(default_factory=list)
    #: The tree the processes run from (benchmarks start an older checkout for an A/B).
    root: Path = ROOT

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = clean_env()
        env.update(
            REDIS_URL=self.redis_url,
            REGINA_HOST="127.0.0.1",
            REGINA_AGENTS_DIR=str(ROOT / "tests" / "agents"),
            REGINA_MEMBER_TTL="3",
            REGINA_MEMBER_HEARTBEAT="0.5",
            REGINA_LIMITS__WORKER_REPLY_TIMEOUT="15",
            REGINA_LIMITS__REQUEST_TIMEOUT="60",
            REGINA_CONCURRENCY="50",
            OPENAI_BASE_URL=self.fake_url + "/v1",
            ANTHROPIC_BASE_URL=self.fake_url,
            AI_GATEWAY_BASE_URL=self.fake_url + "/v1",
            OPENAI_API_KEY="sk-test-openai",
            ANTHROPIC_API_KEY="sk-test-anthropic",
            AI_GATEWAY_API_KEY="sk-test-gateway",
        )
        env.update(self.env_overrides)
        env.update(extra or {})
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.tmp / f"{name}.log"
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=self.root,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def start_worker(self, member_id: str | None = None, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
        """A worker with its own VFS dir; ready once it is a live member in Redis."""
        n = sum(1 for p in self.procs if p.name.startswith("worker")) + 1
        member = member_id or f"w{n}-{os.getpid()}-{time.monotonic_ns() % 100000}@test"
        e = {"REGINA_VFS_DIR": str(self.tmp / f"vfs-{member.split('@')[0]}")}
        e.update(env or {})
        proc = self._spawn(f"worker{n}", [REGINA, "worker", "--member-id", member], self.env(e))
        proc.member_id = member
        if wait:
            self.wait_worker(proc)
        return proc

    def wait_worker(self, proc: Proc, timeout: float = 60) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            wait_until(
                lambda: (
                    (proc.alive() or _raise(f"{proc.name} exited:\n{proc.log()[-3000:]}"))
                    and client.exists(f"regina:member:{proc.member_id}")
                    # this process registered, not an earlier one with the same member id
                    and f"ready (pid {proc.popen.pid})" in proc.log()
                    # and finished the imports it does after joining (workers/signals.py), so a
                    # test meets a worker as warm as one that imported everything before joining
                    # (an older checkout started for an A/B, `root`, may import before joining)
                    and (not _preloads_after_join(self.root) or any(line in proc.log() for line in PRELOAD_DONE))
                ),
                timeout=timeout,
                what=f"{proc.name} to join the cluster",
            )
        finally:
            client.close()

    def start_web(self, env: dict[str, str] | None = None, workers: int = 1) -> Proc:
        """gunicorn on a free port; ready once /healthz answers."""
        port = free_port()
        e = {"PORT": str(port)}
        e.update(env or {})
        n = sum(1 for p in self.procs if p.name.startswith("web")) + 1
        proc = self._spawn(f"web{n}", [REGINA, "web", "--workers", str(workers)], self.env(e))
        proc.url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if not proc.alive():
                _raise(f"{proc.name} exited:\n{proc.log()[-3000:]}")
            return httpx.get(proc.url + "/healthz", timeout=1).status_code == 200

        wait_until(ready, timeout=60, what=f"{proc.name} to answer /healthz")
        return proc

    def start(self, workers: int = 1, web: bool = True) -> Cluster:
        """Start `workers` workers side by side, wait until each joined, then one web process.

        On a failure the processes' logs are printed (the caller's teardown stops them)."""
        try:
            started = [self.start_worker(wait=False) for _ in range(workers)]
            for proc in started:
                self.wait_worker(proc)
            if web:
                self.start_web()
        except BaseException:
            print(self.dump_logs())
            raise
        return self

    @property
    def web(self) -> Proc:
        """The first web process."""
        return next(p for p in self.procs if p.name.startswith("web"))

    @property
    def workers(self) -> list[Proc]:
        """The worker processes, in start order."""
        return [p for p in self.procs if p.name.startswith("worker")]

    def stop(self) -> None:
        """SIGTERM every process at once, then wait for each: a worker up to 30 s (it finishes
        its steps and backs up), a web 5 s (it keeps nothing; its graceful stop waits for every
        request in flight, such as a chat a test's client gave up on, for up to 30 s)."""
        for proc in self.procs:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop(timeout=5 if proc.name.startswith("web") else 30)

    def kill(self) -> None:
        """kill -9 every process (a cluster whose Redis is thrown away next: nothing of a graceful
        stop is kept, and a worker's warm shutdown alone takes ~4 s: Celery's consumer drains once
        more before it stops)."""
        for proc in self.procs:  # each leads a process group: its gunicorn workers, tool processes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()

    def dump_logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-6000:]}" for p in self.procs)


def _preloads_after_join(root: Path) -> bool:
    """Whether the worker of the checkout at `root` imports LiteLLM after joining (and logs it)."""
    signals = root / "workers" / "signals.py"
    return signals.exists() and PRELOAD_DONE[0] in signals.read_text(encoding="utf-8")


def _group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group `pgid` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except ProcessLookupError:
                continue
    return pids


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class ProcessDied(BaseException):
    """A process a test waits for exited; BaseException so polling loops do not swallow it."""


def _raise(message: str) -> bool:
    raise ProcessDied(message)
