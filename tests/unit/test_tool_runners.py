"""Tool runners (docs/isolation.md): threads off the caller's thread, processes with limits."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import BaseModel

from regina.config import Limits, Settings
from regina.definitions import parse_definition
from regina.errors import ConfigError, DefinitionError, ToolError
from regina.journal import apply
from regina.runtime.tools.base import Tool
from regina.runtime.tools.child import ChildSpec
from regina.runtime.tools.loading import load_tool_module
from regina.runtime.tools.process import ProcessRunner
from regina.runtime.tools.runner import ThreadRunner
from regina.runtime.tools.toolset import build_tools
from regina.vfs import MemoryVFS, SQLiteVFS, open_vfs
from tests.harness.waiting import wait_until

TOOL = """
import logging
import os
import subprocess
import time

from pydantic import BaseModel

from regina.runtime.tools.base import tool


class Params(BaseModel):
    mode: str
    path: str = ""


@tool(description="test", parameters=Params)
def work(p: Params) -> dict:
    if p.mode.startswith("spawn"):  # a process of the tool's own, its pid written to p.path
        spawned = subprocess.Popen(["sleep", "777"])
        with open(p.path + ".tmp", "w") as f:
            f.write(str(spawned.pid))
        os.rename(p.path + ".tmp", p.path)
        if p.mode == "spawn-exit":
            os._exit(3)
        if p.mode == "spawn-sleep":
            time.sleep(60)
        return {"pid": os.getpid(), "spawned": spawned.pid}
    if p.mode == "log":  # p.path: the text to log
        logging.getLogger("mytool").warning("calling upstream with %s", p.path)
        logging.getLogger("mytool").info("called upstream")
        import regina.secrets  # what tool code here can read of the worker's secrets

        return {"pid": os.getpid(), "readable": repr((regina.secrets.known_secrets(), regina.secrets._digests))}
    if p.mode == "exit":
        os._exit(3)
    if p.mode == "sleep":
        time.sleep(60)
    if p.mode == "raise":
        raise ValueError("boom")
    return {"pid": os.getpid()}
"""


class P(BaseModel):
    x: int = 0


def _tool(fn: Any) -> Tool:
    return Tool(name="t", description="t", parameters=P, fn=fn)


def test_thread_runner_runs_sync_and_async_tools_off_the_calling_thread() -> None:
    here = threading.get_ident()

    async def coro(p: P) -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    runner = ThreadRunner(5)
    assert runner.run(_tool(lambda p: threading.get_ident()), {}) != here
    assert runner.run(_tool(coro), {}) != here
    inline = Tool(name="t", description="t", parameters=P, fn=lambda p: threading.get_ident(), inline=True)
    assert runner.run(inline, {}) == here


def test_thread_runner_times_out_and_cancels_with_a_tool_error() -> None:
    runner = ThreadRunner(0.3)
    with pytest.raises(ToolError, match=r"timed out after 0.3 s \(limits.toolTimeout\) and was abandoned"):
        runner.run(_tool(lambda p: time.sleep(3)), {})
    runner = ThreadRunner(30)
    threading.Timer(0.2, runner.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(ToolError, match="was cancelled"):
        runner.run(_tool(lambda p: time.sleep(3)), {})
    assert time.monotonic() - t0 < 2


@pytest.fixture
def proc_runner(tmp_path: Path) -> Iterator[tuple[ProcessRunner, dict[str, Tool], SQLiteVFS]]:
    path = tmp_path / "work.py"
    path.write_text(TOOL)
    vfs = open_vfs("sqlite", "i1", str(tmp_path), None, "NORMAL")
    assert isinstance(vfs, SQLiteVFS)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/", "PWD": "/"}
    tools = build_tools(vfs, env=env, limits=Limits(), network=False, user_tools={"work": load_tool_module(path)})
    spec = ChildSpec(
        "i1", "sqlite", str(tmp_path), None, "NORMAL", env, Limits().model_dump(), False, (str(path),), 1024
    )
    runner = ProcessRunner(spec, child_tools=set(tools), timeout=3, cpu_seconds=30, fallback=ThreadRunner(5))
    yield runner, tools, vfs
    runner.close()
    vfs.close()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_process_runner_shares_the_vfs_and_survives_its_child(
    proc_runner: tuple[ProcessRunner, dict[str, Tool], SQLiteVFS],
) -> None:
    runner, tools, vfs = proc_runner
    runner.run(tools["write_file"], {"path": "/a.txt", "content": "from the child"})
    assert vfs.read("/a.txt") == b"from the child"
    vfs.write("/b.txt", b"from the worker")
    assert runner.run(tools["bash"], {"command": "cat /b.txt"})["stdout"] == "from the worker"
    first = runner.run(tools["work"], {"mode": "pid"})["pid"]
    assert first != os.getpid() and runner.run(tools["work"], {"mode": "pid"})["pid"] == first  # reused
    with pytest.raises(ToolError, match="ValueError: boom"):
        runner.run(tools["work"], {"mode": "raise"})
    with pytest.raises(ToolError, match="its process exited with status 3"):
        runner.run(tools["work"], {"mode": "exit"})
    second = runner.run(tools["work"], {"mode": "pid"})["pid"]
    assert second != first
    with pytest.raises(ToolError, match=r"timed out after 3 s \(limits.toolTimeout\) and was stopped"):
        runner.run(tools["work"], {"mode": "sleep"})
    assert _gone(second)
    third = runner.run(tools["work"], {"mode": "pid"})["pid"]
    runner.close()
    assert _gone(third)
    with pytest.raises(ToolError, match="being released"):
        runner.run(tools["work"], {"mode": "pid"})


def test_process_runner_cancel_stops_the_call_in_progress(
    proc_runner: tuple[ProcessRunner, dict[str, Tool], SQLiteVFS],
) -> None:
    runner, tools, _ = proc_runner
    runner.run(tools["work"], {"mode": "pid"})
    threading.Timer(0.3, runner.cancel).start()
    with pytest.raises(ToolError, match="was cancelled"):
        runner.run(tools["work"], {"mode": "sleep"})
    assert "pid" in runner.run(tools["work"], {"mode": "pid"})


def _spawned(path: Path) -> int:
    """The pid of the process the tool started (mode "spawn…"), once it is written; the file goes."""
    pid = int(wait_until(lambda: path.exists() and path.read_text(), timeout=10, what="the spawned pid"))
    path.unlink()
    return pid


def test_no_process_a_tool_started_outlives_a_timeout_a_cancel_a_crash_or_a_close(
    proc_runner: tuple[ProcessRunner, dict[str, Tool], SQLiteVFS], tmp_path: Path
) -> None:
    """docs/isolation.md: no process of a tool's outlives its call's stop or its instance's
    release. Killing the child alone left a tool's `subprocess.Popen` running, reparented to init."""
    runner, tools, _ = proc_runner
    pidfile = tmp_path / "spawned"
    spawn = {"path": str(pidfile)}
    with pytest.raises(ToolError, match="timed out"):
        runner.run(tools["work"], {"mode": "spawn-sleep", **spawn})
    sleeper = _spawned(pidfile)
    wait_until(lambda: _gone(sleeper), timeout=5, what="a tool's process outliving its timed-out call")

    threading.Timer(0.5, runner.cancel).start()
    with pytest.raises(ToolError, match="was cancelled"):
        runner.run(tools["work"], {"mode": "spawn-sleep", **spawn})
    sleeper = _spawned(pidfile)
    wait_until(lambda: _gone(sleeper), timeout=5, what="a tool's process outliving its cancelled call")

    with pytest.raises(ToolError, match="exited with status 3"):
        runner.run(tools["work"], {"mode": "spawn-exit", **spawn})
    sleeper = _spawned(pidfile)
    wait_until(lambda: _gone(sleeper), timeout=5, what="a tool's process outliving its crashed child")

    answer = runner.run(tools["work"], {"mode": "spawn", **spawn})  # left running by a call that answered
    sleeper = _spawned(pidfile)
    assert answer["spawned"] == sleeper and not _gone(sleeper)
    runner.close()
    wait_until(lambda: _gone(sleeper), timeout=5, what="a tool's process outliving its instance's release")


WORKER = """
import os, sys
from pathlib import Path

from regina.config import Limits
from regina.runtime.tools.child import ChildSpec
from regina.runtime.tools.loading import load_tool_module
from regina.runtime.tools.process import ProcessRunner
from regina.runtime.tools.runner import ThreadRunner
from regina.runtime.tools.toolset import build_tools
from regina.vfs import open_vfs

if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/", "PWD": "/"}
    vfs = open_vfs("sqlite", "i1", str(tmp), None, "NORMAL")
    path = str(tmp / "work.py")
    tools = build_tools(vfs, env=env, limits=Limits(), network=False, user_tools={"work": load_tool_module(path)})
    spec = ChildSpec("i1", "sqlite", str(tmp), None, "NORMAL", env, Limits().model_dump(), False, (path,))
    runner = ProcessRunner(spec, child_tools=set(tools), timeout=60, cpu_seconds=30, fallback=ThreadRunner(5))
    runner.run(tools["work"], {"mode": "spawn-sleep", "path": str(tmp / "spawned")})
"""


def test_no_process_a_tool_started_outlives_a_worker_killed_mid_call(tmp_path: Path) -> None:
    # Given a worker whose tool process is stuck in a call that started a process of its own
    import signal
    import subprocess
    import sys

    (tmp_path / "work.py").write_text(TOOL)
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    worker = subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path)], env=env)
    try:
        sleeper = _spawned(tmp_path / "spawned")
        tool_process = psutil.Process(sleeper).ppid()
        # When the worker is killed -9
        worker.kill()
        worker.wait(10)
        # Then its tool process and the process it started die with it
        wait_until(lambda: _gone(tool_process) and _gone(sleeper), timeout=10, what="processes outliving the worker")
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)


LOGGING_WORKER = """
import json, os, sys
from pathlib import Path

from regina.config import Limits
from regina.logs import configure
from regina.runtime.tools.child import ChildSpec
from regina.runtime.tools.loading import load_tool_module
from regina.runtime.tools.process import ProcessRunner
from regina.runtime.tools.runner import ThreadRunner
from regina.runtime.tools.toolset import build_tools
from regina.secrets import add_secret, install_log_redaction
from regina.vfs import open_vfs

if __name__ == "__main__":
    tmp = Path(sys.argv[1])
    install_log_redaction()
    configure("worker", "INFO", "json")
    add_secret("registered-secret-0123456789")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/", "PWD": "/"}
    vfs = open_vfs("sqlite", "i1", str(tmp), None, "NORMAL")
    path = str(tmp / "work.py")
    tools = build_tools(vfs, env=env, limits=Limits(), network=False, user_tools={"work": load_tool_module(path)})
    spec = ChildSpec("i1", "sqlite", str(tmp), None, "NORMAL", env, Limits().model_dump(), False, (path,))
    runner = ProcessRunner(spec, child_tools=set(tools), timeout=60, cpu_seconds=30, fallback=ThreadRunner(5))
    text = "registered-secret-0123456789 and " + os.environ["UPSTREAM_API_KEY"]
    answer = runner.run(tools["work"], {"mode": "log", "path": text})
    runner.close()
    print(json.dumps(answer))
"""


def test_a_tool_process_logs_in_the_workers_format_with_secrets_redacted(tmp_path: Path) -> None:
    """A tool's log line reaches the worker's stderr: it must not carry a secret (the child's
    environment has none of the worker's, so its redaction did not know them) and it is in the
    worker's configured format and level (the child configured logging as basicConfig, WARNING)."""
    import json
    import subprocess
    import sys

    # Given a worker logging JSON at INFO, with a registered secret and one from its environment
    (tmp_path / "work.py").write_text(TOOL)
    (tmp_path / "worker.py").write_text(LOGGING_WORKER)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "UPSTREAM_API_KEY": "env-secret-abcdefghijkl",
    }
    # When a tool in its tool process logs both
    out = subprocess.run(
        [sys.executable, str(tmp_path / "worker.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    tool_pid = answer["pid"]
    # (tool code runs there: it can read no secret of the worker's, only salted digests)
    assert "registered-secret" not in answer["readable"] and "env-secret" not in answer["readable"]
    # Then the worker's stderr has neither secret, and the tool's lines are JSON of Regina's
    # format, at the worker's level, from the tool process
    assert "registered-secret" not in out.stderr and "env-secret" not in out.stderr, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines() if '"mytool"' in line]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("WARNING", "calling upstream with [redacted] and [redacted]"),
        ("INFO", "called upstream"),
    ], out.stderr
    assert all(line["role"] == "worker" and line["pid"] == tool_pid and "time" in line for line in lines)


def test_use_processes_needs_a_vfs_a_child_can_open(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="useProcesses needs vfsBackend sqlite or realdir"):
        Settings(use_processes=True, vfs_backend="memory")
    md = tmp_path / "a.md"
    md.write_text("---\nname: a\nmodel: gpt-4o\nuseProcesses: true\n---\nhi\n")
    assert parse_definition(md, Settings()).use_processes is True
    assert parse_definition(md, Settings(use_processes=False)).use_processes is True
    md.write_text("---\nname: a\nmodel: gpt-4o\nuseProcesses: false\n---\nhi\n")
    assert parse_definition(md, Settings(use_processes=True)).use_processes is False
    md.write_text("---\nname: a\nmodel: gpt-4o\nuseProcesses: true\n---\nhi\n")
    with pytest.raises(DefinitionError, match="field 'useProcesses': useProcesses needs vfsBackend"):
        parse_definition(md, Settings(vfs_backend="memory"))


def test_use_processes_is_accepted_from_the_environment() -> None:
    from regina.config import load_settings

    assert load_settings({"REGINA_USE_PROCESSES": "true"}).use_processes is True
    with pytest.raises(ConfigError, match="useProcesses needs"):
        load_settings({"REGINA_USE_PROCESSES": "true", "REGINA_VFS_BACKEND": "memory"})


def _journaled_runner(
    iid: str, vfs: Any, tmp_path: Path, timeout: float, limits: Limits | None = None, **hooks: Any
) -> tuple[dict[str, Tool], ProcessRunner]:
    """The default tools of a sqlite instance in `tmp_path`, and a process runner for them whose
    child reports its changes for the journal (`hooks`: on_change, before_call)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/", "PWD": "/"}
    limits = limits or Limits()
    tools = build_tools(vfs, env=env, limits=limits, network=False, user_tools={})
    spec = ChildSpec(iid, "sqlite", str(tmp_path), None, "NORMAL", env, limits.model_dump(), False, journal=True)
    runner = ProcessRunner(
        spec, child_tools=set(tools), timeout=timeout, cpu_seconds=30, fallback=ThreadRunner(5), **hooks
    )
    return tools, runner


def test_a_tool_process_reports_every_change_for_the_journal_even_from_a_call_cut_short(tmp_path: Path) -> None:
    # Given a process runner whose instance is journaled (the worker records what the child reports)
    vfs = open_vfs("sqlite", "i1", str(tmp_path), None, "NORMAL")
    changes: list[tuple[Any, ...]] = []
    tools, runner = _journaled_runner("i1", vfs, tmp_path, 3, on_change=lambda *c: changes.append(c))
    try:
        # When tools in the child write, make directories, append, move and remove files
        runner.run(tools["write_file"], {"path": "/d/a.txt", "content": "one"})
        moves = "echo two >> /d/a.txt && mkdir -p /e && mv /d/a.txt /e/b.txt && rm -r /d"
        runner.run(tools["bash"], {"command": moves})
        # Then each change reached the worker, in order, and replays to the same files
        ops = [c[0] for c in changes]
        assert ops[0] == "write" and changes[0][1] == "/d/a.txt" and "rename" in ops and ops[-1] == "remove", changes
        replayed = MemoryVFS()
        for op, *args in changes:
            apply(replayed, op, list(args))
        assert replayed.read("/e/b.txt") == vfs.read("/e/b.txt") == b"onetwo\n"
        assert not replayed.exists("/d") and not vfs.exists("/d")

        # And a call that wrote and then ran past its timeout still reports its write
        changes.clear()
        with pytest.raises(ToolError, match="timed out"):
            runner.run(tools["bash"], {"command": "echo late > /late.txt; sleep 30"})
        assert [c[:2] for c in changes] == [("write", "/late.txt")], changes
    finally:
        runner.close()
        vfs.close()


def test_a_call_whose_process_was_stopped_asks_for_a_backup_and_a_tools_own_error_does_not(
    tmp_path: Path,
) -> None:
    """A process stopped mid-call (timed out, killed, out of memory) may have written the file
    without reporting it: the worker must back the file up (`JournalVFS.must_checkpoint`)."""
    vfs = open_vfs("sqlite", "i1", str(tmp_path), None, "NORMAL")
    asked: list[str] = []
    tools, runner = _journaled_runner("i1", vfs, tmp_path, 2, on_unreported=lambda: asked.append("backup"))
    try:
        with pytest.raises(ToolError):
            runner.run(tools["read_file"], {"path": "/missing.txt"})  # the tool's own error
        assert runner.run(tools["bash"], {"command": "echo ok"})["stdout"] == "ok\n"
        assert asked == []
        with pytest.raises(ToolError, match="timed out"):
            runner.run(tools["bash"], {"command": "sleep 30"})
        assert asked == ["backup"]
    finally:
        runner.close()
        vfs.close()


def test_a_call_reporting_too_many_changes_is_stopped_and_the_journal_still_describes_the_files(
    tmp_path: Path,
) -> None:
    """The worker holds every change a tool process reports until the step's journal flush: a
    bash loop rewriting a big file made gigabytes pending in the worker during one call. Past
    16 × limits.maxFileBytes of changes the call is stopped; what it changed before is journaled."""
    from regina.journal import MUST_CHECKPOINT, JournalVFS, parse

    # Given a journaled instance whose files may hold 64 KiB (so a call may change 1 MiB)
    worker = JournalVFS(open_vfs("sqlite", "i4", str(tmp_path), None, "NORMAL"), epoch=1, seq=0)
    tools, runner = _journaled_runner(
        "i4",
        worker,
        tmp_path,
        60,
        limits=Limits(max_file_bytes=64 * 1024),
        on_change=worker.record,
        before_call=worker.mark_changing,
        on_unreported=worker.must_checkpoint,
    )
    try:
        # When a call rewrites a 49 KB file 200 times (10 MB of changes)
        loop = "seq 1 10000 > /s; for i in $(seq 1 200); do cat /s > /c; done; echo finished > /f"
        with pytest.raises(ToolError, match=r"more than 1048576 bytes .*16 × limits.maxFileBytes"):
            runner.run(tools["bash"], {"command": loop})
        # Then it was stopped past 1 MiB, and the worker holds about that much (plus the pipe's buffer)
        assert not worker.exists("/f")
        assert worker.pending_bytes < 2 << 20, worker.pending_bytes
        # And the journal replays to the files the instance has, which will be backed up at the
        # step's end (a change made and not reported when the process was killed)
        replayed = MemoryVFS()
        for entry in worker.pending:
            body = parse(entry)[1]
            apply(replayed, str(body[1]), body[2:])
        assert replayed.read("/s") == worker.read("/s") and len(worker.read("/s")) == 48894
        assert replayed.read("/c") == worker.read("/c") == worker.read("/s")
        assert worker.written_bytes >= MUST_CHECKPOINT
        # And the next call's fresh process sees those files and may change them again
        assert runner.run(tools["bash"], {"command": "diff -q /s /c && wc -c < /c"})["stdout"].strip() == "48894"
    finally:
        runner.close()
        worker.close()


def test_a_tool_process_never_writes_a_copy_still_marked_clean(tmp_path: Path) -> None:
    """After a checkpoint the file says it is a backup (dirty 0). The next call's process writes
    it before the worker journals what it reports: a worker killed in between must not leave a
    copy marked clean that holds a change the journal lacks, so the worker marks it first."""
    from regina.journal import JournalVFS
    from regina.vfs.sqlite_files import read_meta

    path = str(tmp_path / "i3.sqlite")
    worker = JournalVFS(open_vfs("sqlite", "i3", str(tmp_path), None, "NORMAL"), epoch=1, seq=0)
    seen: list[str | None] = []

    def on_change(*change: Any) -> None:  # the child's write is committed by now
        seen.append(read_meta(path).get("dirty"))
        worker.record(*change)

    tools, runner = _journaled_runner("i3", worker, tmp_path, 5, on_change=on_change, before_call=worker.mark_changing)
    try:
        runner.run(tools["write_file"], {"path": "/a.txt", "content": "first call"})
        worker.set_meta("dirty", "0")  # a checkpoint: the file is the backup again
        worker.touched = False
        seen.clear()
        runner.run(tools["write_file"], {"path": "/b.txt", "content": "next run, same process"})
        assert seen == ["1"]
    finally:
        runner.close()
        worker.close()


def test_a_call_withdrawn_while_queued_for_a_thread_never_runs() -> None:
    """The model was told the call timed out or was cancelled: it must not run later, when a
    thread of the pool frees up."""
    import concurrent.futures

    ran: list[str] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        runner = ThreadRunner(0.3, pool=pool)
        with pytest.raises(ToolError, match="abandoned"):
            runner.run(_tool(lambda p: time.sleep(1.5)), {})  # holds the only thread
        with pytest.raises(ToolError, match="abandoned"):
            runner.run(_tool(lambda p: ran.append("timed out")), {})  # queued behind it
        runner = ThreadRunner(30, pool=pool)
        threading.Timer(0.1, runner.cancel).start()
        with pytest.raises(ToolError, match="was cancelled"):
            runner.run(_tool(lambda p: ran.append("cancelled")), {})
        time.sleep(2)  # the first call ends; the two withdrawn ones get the thread
        assert runner.run(_tool(lambda p: ran.append("later") or "ok"), {}) == "ok"
        assert ran == ["later"]
    finally:
        pool.shutdown()


def test_process_runner_cancel_while_its_process_starts_fails_the_call(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": "/", "PWD": "/"}
    spec = ChildSpec("i2", "sqlite", str(tmp_path), None, "NORMAL", env, Limits().model_dump(), False, (), 1024)
    vfs = open_vfs("sqlite", "i2", str(tmp_path), None, "NORMAL")
    tools = build_tools(vfs, env=env, limits=Limits(), network=False, user_tools={})
    runner = ProcessRunner(spec, child_tools={"bash"}, timeout=30, cpu_seconds=30, fallback=ThreadRunner(5))
    try:
        started = threading.Event()
        real_start = runner._start

        def slow_start() -> Any:
            started.set()
            time.sleep(0.5)  # a fork server still loading its modules
            return real_start()

        runner._start = slow_start  # type: ignore[method-assign]
        threading.Thread(target=lambda: (started.wait(5), runner.cancel())).start()
        t0 = time.monotonic()
        with pytest.raises(ToolError, match="was cancelled"):
            runner.run(tools["bash"], {"command": "sleep 5; echo finished > /done"})
        assert time.monotonic() - t0 < 4
        assert not vfs.exists("/done")
    finally:
        runner.close()
        vfs.close()


def test_process_runner_leaves_an_inline_tool_of_a_child_tools_name_to_its_fallback(tmp_path: Path) -> None:
    """An MCP tool (inline) named like a built-in wins the merge: it, not the child's built-in, runs."""
    spec = ChildSpec("i3", "sqlite", str(tmp_path), None, "NORMAL", {}, Limits().model_dump(), False, (), 1024)
    runner = ProcessRunner(spec, child_tools={"read_file"}, timeout=5, cpu_seconds=None, fallback=ThreadRunner(5))
    try:
        mcp_tool = Tool("read_file", "an MCP tool", P, lambda p: "from MCP", inline=True)
        assert runner.run(mcp_tool, {}) == "from MCP"
        assert runner.pid is None  # no tool process was started for it
    finally:
        runner.close()


def test_a_coroutine_waited_for_by_an_interrupted_greenlet_is_cancelled() -> None:
    """A run cancelled while its step waits on an MCP call (a coroutine on the background loop):
    the call is cancelled too, not left running to its timeout."""
    import subprocess
    import sys

    script = """
from gevent import monkey; monkey.patch_all()
import asyncio, gevent
from regina.runtime.aio import run_coro
log = []
async def call():
    try:
        await asyncio.sleep(2)
        log.append("completed")
    except asyncio.CancelledError:
        log.append("cancelled"); raise
class Stop(Exception): pass
def step():
    try:
        run_coro(call(), timeout=30)
    except Stop:
        log.append("interrupted")
g = gevent.spawn(step)
gevent.sleep(0.3)
gevent.kill(g, Stop)
gevent.sleep(2.5)
print(",".join(log))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().split(",") == ["interrupted", "cancelled"] or out.stdout.strip().split(",") == [
        "cancelled",
        "interrupted",
    ]


def test_a_call_abandoned_in_its_thread_changes_no_file_after(tmp_path: Path) -> None:
    """A thread cannot be stopped: the call timed out (the model was told so, the instance may be
    backed up or moved next), and whatever it writes later is refused."""
    from regina.vfs.guarded import ToolVFS

    vfs = MemoryVFS()
    view = ToolVFS(vfs)
    ran = threading.Event()

    def slow(p: P) -> str:
        view.write("/before", b"1")
        time.sleep(0.6)
        ran.set()
        view.write("/after", b"2")
        return "done"

    with pytest.raises(ToolError, match="abandoned"):
        ThreadRunner(0.3).run(_tool(slow), {})
    assert ran.wait(5)
    time.sleep(0.1)
    assert vfs.exists("/before") and not vfs.exists("/after")
    # The thread's next call is a call of its own again.
    assert ThreadRunner(5).run(_tool(lambda p: view.write("/next", b"3") or "ok"), {}) == "ok"
    assert vfs.exists("/next")


def test_stopping_a_long_dead_tool_process_spares_a_group_that_reused_its_pid() -> None:
    """A tool process that died while idle is stopped later (its next call, a suspend): its pid
    may by then lead another group, another instance's tool process maybe (each leads one).
    Killing that group would kill a stranger; the group is killed only while the pid is free."""
    import subprocess
    from types import SimpleNamespace

    from regina.runtime.tools.process import _kill

    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)  # leads a group of its own
    try:
        dead_child = SimpleNamespace(pid=stranger.pid, exitcode=-9)  # reaped: its pid was reused
        _kill(dead_child)
        time.sleep(0.2)
        assert stranger.poll() is None, "a group that reused a dead tool process's pid was killed"
    finally:
        stranger.kill()
        stranger.wait()
