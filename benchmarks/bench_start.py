"""Process start to ready: `regina up` (embedded Redis + web + workers) from its exec to
`/healthz?ready=1` answering 200, to the "regina up: ready" line, and to the first chat answered.

Each round starts `regina up` in a fresh data directory (its own embedded Redis) with the fake LLM
in its own process, polls `/healthz?ready=1` every 10 ms, then spawns an instance and sends one
sync chat, and stops it with SIGINT (what Ctrl-C does). Rounds alternate between the worker
counts asked for.

    .venv/bin/python -m benchmarks.bench_start [--rounds 3] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import ROOT, Table, fake_llm_process, machine, show
from tests.harness.lifeline import die_with_parent
from tests.harness.ports import free_port
from tests.harness.processes import REGINA, clean_env

TARGET_READY_S = 2.0


def _poll(fn: object, deadline: float) -> float:
    """Seconds (monotonic) at which fn() first returned True."""
    assert callable(fn)
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError("regina up did not get ready in time")


def one_round(fake_url: str, workers: int) -> dict[str, float]:
    """Start `regina up --workers N`, time its way to ready and to a first chat, stop it."""
    tmp = Path(tempfile.mkdtemp(prefix="regina-bench-start-"))
    port = free_port()
    env = clean_env()
    env.update(
        PORT=str(port),
        REGINA_DATA_DIR=str(tmp / "data"),
        REGINA_AGENTS_DIR=str(ROOT / "tests" / "agents"),
        REGINA_VFS_DIR=str(tmp / "vfs"),
        OPENAI_BASE_URL=fake_url + "/v1",
        OPENAI_API_KEY="sk-test-openai",
    )
    api = f"http://127.0.0.1:{port}"
    log = (tmp / "up.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [REGINA, "up", "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"regina up exited: {(tmp / 'up.log').read_text()[-2000:]}")
        try:
            return httpx.get(api + "/healthz", params={"ready": "1"}, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        t_ready = _poll(ready, t0 + 120)
        t_line = _poll(lambda: "regina up: ready" in (tmp / "up.log").read_text(errors="replace"), t0 + 120)
        with httpx.Client(base_url=api, timeout=120) as c:
            iid = c.post("/agents/openai-agent/instances").json()["instanceId"]
            t_spawned = time.monotonic()
            reply = c.post(f"/instances/{iid}/chat", json={"message": "first"}).json()
            t_chat = time.monotonic()
        if reply.get("text") != "echo: first":
            raise RuntimeError(f"first chat answered {reply!r}")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return {
        "ready": t_ready - t0,
        "line": t_line - t0,
        "spawn": t_spawned - t0,
        "chat": t_chat - t0,
    }


def run(rounds: int = 3, workers: list[int] | None = None) -> list[Table]:
    counts = workers or [1, 2]
    t = Table(
        "Process start: `regina up` (embedded Redis + 1 web + N workers) to ready and to a first chat (s)",
        ["workers", "rounds", "to /healthz?ready=1", "to the ready line", "to first spawn", "to first chat answered"],
        conditions={**machine(), "rounds": rounds, "poll": "10 ms", "fake LLM": "own process"},
    )
    got: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with fake_llm_process() as fake:
        for _ in range(rounds):
            for n in counts:
                got[n].append(one_round(fake.url, n))
    for n in counts:
        med = {k: statistics.median(r[k] for r in got[n]) for k in ("ready", "line", "spawn", "chat")}
        t.add(n, rounds, med["ready"], med["line"], med["spawn"], med["chat"])
    first = t.rows[0]
    t.notes.append(
        f"medians over rounds; to ready with {first[0]} worker(s): {first[2]:.2f} s (target ≤ {TARGET_READY_S:g}: "
        f"{'meets' if first[2] <= TARGET_READY_S else 'MISSES'}); the first chat also waits for LiteLLM's import, "
        "which a worker does after it joins"
    )
    return [t]


def main(argv: list[str] | None = None) -> list[Table]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_start")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = ap.parse_args(argv)
    return show(run(args.rounds, [int(x) for x in args.workers.split(",")]))


if __name__ == "__main__":
    main()
