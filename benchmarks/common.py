"""Shared pieces of the benchmarks: percentiles, tables, the conditions line, and a stack of real
servers (private Redis, the fake LLM in its own process, `regina worker` + `regina web`).

Every server binds 127.0.0.1 and is stopped in a `finally` by the context manager that started it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from tests.harness.lifeline import die_with_parent  # noqa: E402
from tests.harness.processes import Cluster, Proc  # noqa: E402
from tests.harness.redis_server import RedisServer  # noqa: E402

# -- statistics -------------------------------------------------------------------------------


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of seconds, in milliseconds (nearest-rank on sorted data)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k] * 1000


def p50(xs: Sequence[float]) -> float:
    return statistics.median(xs) * 1000 if xs else float("nan")


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- output -----------------------------------------------------------------------------------


@dataclass
class Table:
    """A titled table with its conditions, printed as aligned text (and kept for the summary)."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(list(row))

    def render(self) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.2f}" if abs(v) < 1000 else f"{v:,.0f}"
            return str(v)

        cells = [self.columns] + [[fmt(v) for v in r] for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
        out = [f"### {self.title}"]
        if self.conditions:
            out.append("conditions: " + ", ".join(f"{k}={v}" for k, v in self.conditions.items()))
        out.append(line(cells[0]))
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out.extend(line(r) for r in cells[1:])
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)

    def print(self) -> None:
        print(self.render() + "\n", flush=True)


def show(tables: list[Table]) -> list[Table]:
    """Print every table (a module's `main` ends with this) and hand them back."""
    for t in tables:
        t.print()
    return tables


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("celery", "kombu", "gevent", "redis", "flask", "gunicorn", "litellm", "httpx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cores": os.cpu_count(),
        "loadavg1_at_start": f"{load:.2f}",
        "kernel": platform.release(),
    }


def redis_version(url: str) -> str:
    c = redis.Redis.from_url(url)
    try:
        return str(c.info("server")["redis_version"])
    finally:
        c.close()


# -- processes ----------------------------------------------------------------------------------


@dataclass
class FakeProc:
    url: str
    pid: int


@contextlib.contextmanager
def fake_llm_process(extra: Sequence[str] = ()) -> Iterator[FakeProc]:
    """The fake LLM server in its own process (no GIL shared with the client)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.harness.fake_llm", "--host", "127.0.0.1", "--port", "0", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=die_with_parent,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"fake LLM did not start (got {url!r})")
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield FakeProc(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Stack:
    redis: RedisServer
    fake_url: str
    fake_pid: int
    cluster: Cluster
    worker: Proc
    web: Proc

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.web.url, timeout=timeout)

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def vfs_dir(self, worker: Proc | None = None) -> Path:
        w = worker or self.worker
        return self.cluster.tmp / f"vfs-{w.member_id.split('@')[0]}"

    def web_worker_pid(self) -> int:
        """The gunicorn worker process (child of the gunicorn master)."""
        master = self.web.popen.pid
        kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return int(kids[0]) if kids else master


@contextlib.contextmanager
def stack(env: dict[str, str] | None = None, root: str | None = None) -> Iterator[Stack]:
    """Private Redis + fake LLM process + one `regina worker` + one `regina web` (1 gunicorn worker).

    `root`: another checkout to run (an A/B): its tree is the processes' working directory and
    comes first on their PYTHONPATH (`python -m celery` puts the working directory first)."""
    server = RedisServer().start()
    try:
        with fake_llm_process() as fake:
            env = dict(env or {})
            if root:
                env["PYTHONPATH"] = root
            cluster = Cluster(server.url, fake.url, env_overrides=env, root=Path(root) if root else ROOT)
            try:
                worker = cluster.start_worker()
                web = cluster.start_web()
                yield Stack(server, fake.url, fake.pid, cluster, worker, web)
            except BaseException:
                logs = cluster.dump_logs()
                if os.environ.get("BENCH_DEBUG"):
                    print(logs, file=sys.stderr)
                raise
            finally:
                cluster.stop()
    finally:
        server.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    """VmRSS of a process, in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def spawn(client: httpx.Client, agent: str = "openai-agent") -> str:
    resp = client.post(f"/agents/{agent}/instances")
    if resp.status_code != 201:
        raise RuntimeError(f"spawn failed: {resp.status_code} {resp.text}")
    return str(resp.json()["instanceId"])
