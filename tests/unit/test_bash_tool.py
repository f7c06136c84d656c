"""The sandboxed bash tool: shared files, env allow-list, no network, limits, truncation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from regina import errors
from regina.config import Limits
from regina.runtime.aio import run_coro
from regina.runtime.tools.bash import VFSBashFs, bash_tool, truncate_output
from regina.runtime.tools.files import file_tools
from regina.sandbox_env import is_secret_name, sandbox_env
from regina.vfs import MemoryVFS, RealDirVFS, SQLiteVFS

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {"HOME": "/", "PWD": "/", "LANG": "C.UTF-8"}


@pytest.mark.parametrize("kind", ["sqlite", "memory", "realdir"])
def test_bash_and_file_tools_share_files(kind: str, tmp_path: Path) -> None:
    if kind == "sqlite":
        vfs: SQLiteVFS | MemoryVFS | RealDirVFS = SQLiteVFS(str(tmp_path / "b.sqlite"))
    elif kind == "memory":
        vfs = MemoryVFS()
    else:
        vfs = RealDirVFS(str(tmp_path / "root"))
    files = file_tools(vfs)
    bash = bash_tool(vfs, env=_env(), limits=Limits())

    files["write_file"].call_sync({"path": "/work/hello.txt", "content": "hello from write_file\n"})
    r = bash.call_sync({"command": "cat /work/hello.txt && wc -l < work/hello.txt"})
    assert r == {"stdout": "hello from write_file\n1\n", "stderr": "", "exitCode": 0}

    r = bash.call_sync({"command": "mkdir -p /out && echo 'made by bash' > /out/b.txt && echo more >> /out/b.txt"})
    assert r["exitCode"] == 0
    assert files["read_file"].call_sync({"path": "/out/b.txt"}) == "made by bash\nmore\n"

    files["edit_file"].call_sync({"path": "/out/b.txt", "old_string": "more", "new_string": "edited"})
    assert bash.call_sync({"command": "grep -c edited /out/b.txt"})["stdout"] == "1\n"

    bash.call_sync({"command": "mv /out/b.txt /out/c.txt && rm -r /work"})
    assert vfs.exists("/out/c.txt") and not vfs.exists("/out/b.txt") and not vfs.exists("/work")
    vfs.close()


def test_rm_and_mv_of_a_symlink_in_a_realdir_leave_its_target(tmp_path: Path) -> None:
    """A link in an fsRootPath tree (a checkout's `latest -> data`): `rm -r` removed the target's
    files and left the link dangling; `mv` moved the target."""
    root = tmp_path / "root"
    vfs = RealDirVFS(str(root))
    bash = bash_tool(vfs, env=_env(), limits=Limits())
    vfs.write("/data/keep.txt", b"precious")
    os.symlink("data", root / "latest")
    r = bash.call_sync({"command": "mv /latest /current && cat /current/keep.txt && rm -r /current; ls /"})
    assert r == {"stdout": "preciousdata\n", "stderr": "", "exitCode": 0}, r
    assert (root / "data" / "keep.txt").read_bytes() == b"precious"
    vfs.close()


def test_each_call_is_a_fresh_shell_but_files_persist() -> None:
    vfs = MemoryVFS()
    bash = bash_tool(vfs, env=_env(), limits=Limits())
    bash.call_sync({"command": "X=1; cd /tmp 2>/dev/null || mkdir /tmp; echo kept > /f"})
    r = bash.call_sync({"command": 'echo "x=${X:-unset} pwd=$(pwd)"; cat /f'})
    assert r["stdout"] == "x=unset pwd=/\nkept\n"


def test_binary_files_survive_bash_copy() -> None:
    vfs = MemoryVFS()
    blob = bytes(range(256))
    vfs.write("/in.bin", blob)
    r = bash_tool(vfs, env=_env(), limits=Limits()).call_sync({"command": "cat /in.bin > /out.bin"})
    assert r["exitCode"] == 0
    assert vfs.read("/out.bin") == blob


def test_secret_in_environ_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-1")
    monkeypatch.setenv("DB_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("NOT_ALLOWED", "not-allowed-value")
    monkeypatch.setenv("GREETING", "hi-there")
    env = sandbox_env(["PATH", "GREETING", "OPENAI_API_KEY", "DB_PASSWORD", "HOME"])
    assert "OPENAI_API_KEY" not in env and "DB_PASSWORD" not in env
    assert env["HOME"] == "/" and env["PWD"] == "/" and env["GREETING"] == "hi-there"
    bash = bash_tool(MemoryVFS(), env=env, limits=Limits())
    r = bash.call_sync({"command": "env; set; echo $OPENAI_API_KEY $NOT_ALLOWED; printenv"})
    out = r["stdout"] + r["stderr"]
    assert "hi-there" in out
    for secret in ("sk-very-secret-1", "hunter2-secret", "not-allowed-value"):
        assert secret not in out


def test_secret_name_patterns() -> None:
    for name in ("OPENAI_API_KEY", "anthropic_api_key", "AWS_SECRET_ACCESS_KEY", "GH_TOKEN", "PGPASSWORD"):
        assert is_secret_name(name)
    # The names whose values are redacted from logs and events (regina/secrets.py) are as secret here.
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "SSH_AUTH_SOCK", "DEPLOY_KEY", "MY_PASSWD"):
        assert is_secret_name(name)
    for name in ("PATH", "HOME", "LANG", "TZ", "API_URL"):
        assert not is_secret_name(name)
    assert sandbox_env(["X"], environ={"X": "1", "Y": "2"}) == {"X": "1", "HOME": "/", "PWD": "/"}
    # A value holding a password is not copied whatever its name.
    environ = {"REDIS_URL": "redis://:hunter2hunter2@cache:6379/0", "DB": "postgres://u:pw@db/x", "OK": "https://h/x"}
    assert sandbox_env(["REDIS_URL", "DB", "OK"], environ=environ) == {"OK": "https://h/x", "HOME": "/", "PWD": "/"}


def test_no_network_and_no_host_processes(tmp_path: Path) -> None:
    marker = tmp_path / "host-marker"
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())
    for cmd in (
        "curl -s http://example.com",
        "wget http://example.com",
        "nc -z 127.0.0.1 22",
        "python3 -c 1",
    ):
        r = bash.call_sync({"command": cmd})
        assert r["exitCode"] == 127, (cmd, r)
        assert "command not found" in r["stderr"]
    r = bash.call_sync({"command": f"touch {marker}; /bin/sh -c 'echo pwned > {marker}'"})
    assert not marker.exists()  # paths are VFS paths, /bin/sh is not a host program
    r = bash.call_sync({"command": "cat /etc/passwd"})
    assert r["exitCode"] != 0 and "root:" not in r["stdout"]


def test_network_true_provides_curl() -> None:
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(), network=True)
    r = bash.call_sync({"command": "curl --help | head -1"})
    assert r["stdout"].startswith("Usage: curl")
    # private/loopback targets stay denied even with network on
    assert bash.call_sync({"command": "curl -s http://127.0.0.1:9/"})["exitCode"] != 0


def test_network_curl_connects_only_to_the_addresses_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebinding name (a public address at the check, loopback at the next lookup) written in
    Unicode, whose IDNA form aiohttp resolves again: curl must not reach the loopback server."""
    import http.server
    import threading

    import just_bash.network as network

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"LOOPBACK-SECRET\n")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lookups: list[str] = []

    async def rebinding(hostname: str, port: int) -> list[dict[str, object]]:
        lookups.append(hostname)
        address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"
        return [{"hostname": hostname, "host": address, "port": port, "family": 2, "proto": 6, "flags": 4}]

    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(), network=True)  # patches installed
    monkeypatch.setattr(network, "_resolve_host", rebinding)
    try:
        r = bash.call_sync({"command": f"curl -s http://bücher.example:{server.server_address[1]}/"})
    finally:
        server.shutdown()
    assert "LOOPBACK-SECRET" not in r["stdout"] and hits == [], (r, lookups)
    assert lookups == ["bücher.example"]


def test_time_limit_stops_cpu_loop() -> None:
    limits = Limits(bash_timeout=0.5, bash_max_loop_iterations=10**9, bash_max_commands=10**9)
    bash = bash_tool(MemoryVFS(), env=_env(), limits=limits)
    t0 = time.monotonic()
    r = bash.call_sync({"command": "i=0; while true; do i=$((i+1)); done"})
    assert time.monotonic() - t0 < 3
    assert r["exitCode"] == 124 and "time limit exceeded (0.5 s)" in r["stderr"]


def test_time_limit_stops_sleep() -> None:
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=0.3))
    t0 = time.monotonic()
    r = bash.call_sync({"command": "sleep 10; echo done"})
    assert time.monotonic() - t0 < 2
    assert r["exitCode"] == 124 and "time limit" in r["stderr"]


def test_loop_and_command_limits() -> None:
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_max_loop_iterations=100))
    r = bash.call_sync({"command": "for i in $(seq 1 1000); do :; done"})
    assert r["exitCode"] == 125 and "too many iterations (100)" in r["stderr"]
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_max_commands=50))
    r = bash.call_sync({"command": "f() { echo x; f; }; f"})
    assert r["exitCode"] == 125 and "stopped" in r["stderr"]
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_max_commands=50))
    assert "too many commands (50 per call)" in bash.call_sync({"command": "while :; do :; done"})["stderr"]


def test_output_truncation() -> None:
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(max_tool_output_chars=200))
    r = bash.call_sync({"command": "seq 1 5000"})
    assert r["exitCode"] == 0
    assert len(r["stdout"]) < 300 and "truncated" in r["stdout"]
    assert r["stdout"].startswith("1\n2\n3\n") and r["stdout"].endswith("5000\n")
    out, err = truncate_output("o" * 1000, "e" * 1000, 400)
    assert "truncated" in out and "truncated" in err and len(out) + len(err) < 600


def test_syntax_error_is_a_result_not_an_exception() -> None:
    r = bash_tool(MemoryVFS(), env=_env(), limits=Limits()).call_sync({"command": "if then fi ("})
    assert r["exitCode"] == 2 and r["stderr"]


# -- run_coro ---------------------------------------------------------------------------------------


def test_run_coro_from_threads() -> None:
    async def work(i: int) -> int:
        await asyncio.sleep(0.2)
        return i * 2

    results: dict[int, int] = {}

    def call(i: int) -> None:
        results[i] = run_coro(work(i), timeout=5)

    t0 = time.monotonic()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i * 2 for i in range(20)}
    assert time.monotonic() - t0 < 1.5  # ran concurrently on the one loop


def test_run_coro_timeout_cancels() -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        run_coro(slow(), timeout=0.1)
    assert cancelled.wait(2)


def test_bash_from_threads_concurrently() -> None:
    vfs = MemoryVFS()
    bash = bash_tool(vfs, env=_env(), limits=Limits())
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            r = bash.call_sync({"command": f"echo {i} > /t{i}; cat /t{i}"})
            assert r["stdout"] == f"{i}\n"
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(vfs.listdir("/")) == 20


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import asyncio, time
    import gevent
    from regina.config import Limits
    from regina.runtime.aio import run_coro
    from regina.runtime.tools.bash import bash_tool
    from regina.vfs import SQLiteVFS
    import sys

    async def work(i):
        await asyncio.sleep(0.3)
        return i

    t0 = time.monotonic()
    jobs = [gevent.spawn(run_coro, work(i), 5) for i in range(20)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value for j in jobs] == list(range(20))
    elapsed = time.monotonic() - t0
    assert elapsed < 2, elapsed

    # while coroutines run, other greenlets keep running
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(4)])
    run_coro(work(0), 5)
    ticker.join()
    assert len(ticks) == 4

    vfs = SQLiteVFS(sys.argv[1])
    bash = bash_tool(vfs, env={"HOME": "/", "PWD": "/"}, limits=Limits())
    def call(i):
        r = bash.call_sync({"command": f"mkdir -p /g && echo {i} > /g/{i} && cat /g/{i} | wc -c"})
        assert r["exitCode"] == 0 and r["stdout"].strip() == str(len(str(i)) + 1), r
        return r
    jobs = [gevent.spawn(call, i) for i in range(20)]
    gevent.joinall(jobs, raise_error=True)
    assert len(vfs.listdir("/g")) == 20
    print("OK", round(elapsed, 2))
    """
)


def test_run_coro_and_bash_under_gevent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, str(tmp_path / "g.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK")


@pytest.mark.parametrize(
    ("error", "oserror", "errno_name"),
    [
        (errors.NoSuchPath, FileNotFoundError, "ENOENT"),
        (errors.IsADirectory, IsADirectoryError, "EISDIR"),
        (errors.NotADirectory, NotADirectoryError, "ENOTDIR"),
        (errors.DirectoryNotEmpty, OSError, "ENOTEMPTY"),
        (errors.PathExists, FileExistsError, "EEXIST"),
        (errors.VFSError, OSError, "EIO"),
    ],
)
def test_vfs_errors_map_to_errno_by_class_whatever_the_message(
    error: type[errors.VFSError], oserror: type[OSError], errno_name: str
) -> None:
    mapped = VFSBashFs._oserror(error("a message that names no errno"), "open", "/p")
    assert type(mapped) is oserror and str(mapped).startswith(errno_name + ":")


def test_sqlite3_reaches_no_file_of_the_host_and_stops(tmp_path: Path) -> None:
    """`sqlite3 :memory:` is a SQL toy over nothing; ATTACH and VACUUM INTO opened any file of the
    worker's host (another instance's VFS file: its transcript, to read or forge)."""
    import sqlite3
    import time

    host_db = tmp_path / "other-instance.sqlite"
    conn = sqlite3.connect(host_db)
    conn.execute("CREATE TABLE entries (path TEXT, data BLOB)")
    conn.execute("INSERT INTO entries VALUES ('/.session/messages.jsonl', 'the other transcript')")
    conn.commit()
    conn.close()
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())

    read = bash.call_sync({"command": f"sqlite3 :memory: \"ATTACH '{host_db}' AS o; SELECT * FROM o.entries;\""})
    assert "not authorized" in read["stdout"] and "the other transcript" not in read["stdout"]
    copy = tmp_path / "copy.sqlite"
    bash.call_sync({"command": f"sqlite3 :memory: \"VACUUM INTO '{copy}'\""})
    assert not copy.exists()
    t0 = time.monotonic()
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c;"
    endless = bash.call_sync({"command": f"sqlite3 :memory: '{forever}'"})
    assert "interrupted" in endless["stdout"] and time.monotonic() - t0 < 5
    assert bash.call_sync({"command": "sqlite3 :memory: 'SELECT 1 + 2'"})["stdout"] == "3\n"


def test_arithmetic_is_64_bit_as_in_bash_and_never_runs_away() -> None:
    """Python's ints computed 9**9**9 in full: minutes of CPU in one statement, which no
    bashTimeout could stop (the deadline is checked between statements)."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=5))
    t0 = time.monotonic()
    out = bash.call_sync({"command": "x=$((9**9**9)); y=$((1<<10000000000)); echo $y $((2**64)) $((2**63)) $((2**62))"})
    assert out["stdout"] == "1 0 -9223372036854775808 4611686018427387904\n"
    assert time.monotonic() - t0 < 2
    assert bash.call_sync({"command": "echo $((9223372036854775807 + 1)) $(( (1+2)*3 ))"})["stdout"] == (
        "-9223372036854775808 9\n"
    )
    assert bash.call_sync({"command": "let y=2**10; ((z = 3 << 2)); echo $y $z"})["stdout"] == "1024 12\n"


def test_what_just_bash_raises_is_a_shell_error_not_a_failed_tool_call() -> None:
    """Refused writes under /.session/ by cp, runaway recursion, lone surrogates in output and
    just-bash's own exceptions: each is stderr and an exit status, as bash would give."""
    from regina.runtime.tools.toolset import build_tools

    vfs = MemoryVFS()
    vfs.mkdir("/.session")
    vfs.write("/.session/messages.jsonl", b"")  # a conversation exists
    bash = build_tools(vfs, env=_env(), limits=Limits(), network=False, user_tools={})["bash"]
    cases = {
        "f(){ x=$(f); }; f": 125,
        'echo hi > "/h${c:=$(echo 1)}"': 2,
    }
    for command, code in cases.items():
        out = bash.call_sync({"command": command})
        assert out["exitCode"] == code and out["stderr"].startswith("bash: "), (command, out)
    # A write the VFS refuses (cp, ln, chmod into /.session/) fails that command, as in bash: the
    # script goes on and keeps its output (it ended the whole call, dropping what came before).
    out = bash.call_sync(
        {
            "command": "echo before; echo x > /a; cp /a /.session/x; echo rc=$?; ln /a /.session/b; echo rc=$?;"
            " chmod 700 /.session/messages.jsonl; echo rc=$?; echo end"
        }
    )
    assert out["stdout"] == "before\nrc=1\nrc=1\nrc=1\nend\n" and out["exitCode"] == 0, out
    assert [line.split(":")[0] for line in out["stderr"].splitlines()] == ["cp", "ln", "chmod"], out
    assert "read-only" in out["stderr"]
    assert not vfs.exists("/.session/x") and not vfs.exists("/.session/b")
    assert bash.call_sync({"command": "printf '\\ud83d\\ude00'; echo $'\\ud800'"})["stdout"] == "\ufffd\ufffd\ufffd\n"


def test_one_statement_cannot_build_gigabytes() -> None:
    """A brace range or a printf field width built its whole text in one statement, before any
    limit was looked at (and the tool's event loop, shared by every call, with it)."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=5))
    t0 = time.monotonic()
    for command in ("echo {1..100000000}", "echo a{1..100000000}b"):
        out = bash.call_sync({"command": command})
        assert out["exitCode"] == 2 and "brace range of 100000000 words is more than 1000000" in out["stderr"]
    for command in ('printf "%2000000000s" x', 'printf "%*s" 2000000000 x'):
        out = bash.call_sync({"command": command})
        assert out["exitCode"] == 1 and out["stderr"] == "printf: field width over 1000000\n", out
    assert time.monotonic() - t0 < 3
    out = bash.call_sync({"command": 'echo {1..3} x{01..02}; printf "%05d|%-3s|%*s|\n" 42 ab 3 z'})
    assert out["stdout"] == "1 2 3 x01 x02\n00042|ab |  z|\n"


def test_a_redirect_target_is_expanded_once() -> None:
    """The check for a missing target directory expanded the target a second time: a `$((n++))`
    or a `$(…)` in it ran twice (bash writes /g0 and prints n=1)."""
    vfs = MemoryVFS()
    bash = bash_tool(vfs, env=_env(), limits=Limits())
    command = 'n=0; echo hi > "/g$((n++))"; echo n=$n; echo x > "/$(echo y >> /log; echo f)"'
    out = bash.call_sync({"command": command})
    assert out["stdout"] == "n=1\n"
    assert vfs.exists("/g0") and not vfs.exists("/g1")
    assert vfs.read("/log") == b"y\n"
    missing = bash.call_sync({"command": 'd=/nope; echo hi > "$d/f"'})
    assert missing["stderr"] == "bash: /nope/f: No such file or directory\n"


def test_shell_variables_cannot_grow_without_bound() -> None:
    """`x=$x$x` forty times: each statement within every other limit, a terabyte at the end."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())
    out = bash.call_sync({"command": "x=a; for i in $(seq 1 40); do x=$x$x; done; echo ${#x}"})
    assert out["exitCode"] == 125 and "shell variables hold more than 67108864 bytes" in out["stderr"]
    assert bash.call_sync({"command": "x=a; for i in $(seq 1 10); do x=$x$x; done; echo ${#x}"})["stdout"] == "1024\n"


def test_a_pipeline_keeps_every_stage_s_errors() -> None:
    """just-bash kept the last stage's stderr only: `grep x /missing | wc -l` said 0, no error."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())
    out = bash.call_sync({"command": "grep x /missing | wc -l; nosuch | cat"})
    assert out["stdout"] == "0\n"
    assert out["stderr"] == "grep: /missing: No such file or directory\nbash: nosuch: command not found\n"
    merged = bash.call_sync({"command": "ls /nope |& cat; ls /nope 2>/dev/null | cat"})
    assert merged["stderr"] == "" and "cannot access '/nope'" in merged["stdout"]
    nested = bash.call_sync({"command": "f(){ ls /nope | cat; }; f | cat"})
    assert nested["stderr"] == "ls: cannot access '/nope': No such file or directory\n"  # once


@pytest.mark.parametrize(
    "command",
    [
        "seq 1 300 > /f; sed ':a;/z/!{s/$/y/;ba}' /f",  # a branch loop that never ends
        "awk 'BEGIN{for(i=0;i<5000;i++)for(j=0;j<5000;j++)k++; print k}'",  # 25 M iterations
    ],
)
def test_sed_and_awk_stop_at_the_deadline_and_free_the_shared_loop(command: str) -> None:
    """sed's and awk's programs run in one synchronous loop: they ran on past bashTimeout, and
    every later bash call of the process timed out behind them on the shared event loop."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=0.5))
    t0 = time.monotonic()
    out = bash.call_sync({"command": command})
    assert out["exitCode"] == 124 and "time limit exceeded (0.5 s)" in out["stderr"], out
    assert time.monotonic() - t0 < 1.5
    t0 = time.monotonic()
    after = bash_tool(MemoryVFS(), env=_env(), limits=Limits()).call_sync({"command": "echo next"})
    assert after == {"stdout": "next\n", "stderr": "", "exitCode": 0}
    assert time.monotonic() - t0 < 0.5


_DOUBLE_17 = ";".join(["s/.*/&&/"] * 17)


@pytest.mark.parametrize(
    ("command", "what"),
    [
        ("echo a | sed ':a;s/.*/&&/;ba'", "sed's pattern space"),
        (f"echo abcdefgh | sed '{_DOUBLE_17};:b;H;bb'", "sed's hold space"),  # 1 Mi, then added on
        (f"echo abcdefgh | sed -n '{_DOUBLE_17};:b;p;bb'", "sed's output"),
        (f"echo abcdefgh | sed -n '{_DOUBLE_17};:b;w /o\n;bb'", "sed's `w /o` text"),
        ("echo | sed -e ':x' -e 'a " + "t" * 20000 + "' -e 'bx'", "sed's append text"),
        ("awk 'BEGIN{s=\"a\"; for(i=0;i<40;i++) s=s s; print length(s)}'", "awk's string"),
        ("awk 'BEGIN{s=\"a\"; for(i=0;i<20;i++) s=s s; while(1){print s}}'", "awk's output"),
    ],
    ids=lambda value: value if value.endswith(("space", "output", "text", "string")) else "",
)
def test_sed_and_awk_cannot_build_gigabytes(command: str, what: str) -> None:
    """Text doubled on every pass of a loop: a gigabyte in thirty passes, well within the time."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=20))
    t0 = time.monotonic()
    out = bash.call_sync({"command": command})
    assert out["exitCode"] == 125 and f"{what} is over 16777216 characters" in out["stderr"], out
    assert time.monotonic() - t0 < 5


def test_sed_and_awk_work_as_before_under_their_guards() -> None:
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())
    out = bash.call_sync({"command": "printf 'a b\\nc d\\n' | sed 's/ /-/;2s/^/>/;s/-/ /' | awk '{print NR, $2}'"})
    assert out == {"stdout": "1 b\n2 d\n", "stderr": "", "exitCode": 0}


def test_seq_refuses_what_it_would_cut_short() -> None:
    """just-bash's seq stopped at 100 000 numbers with exit 0: `seq 200000 | wc -l` said 100000."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())
    assert bash.call_sync({"command": "seq 100000 | tail -1"})["stdout"] == "100000\n"
    for command in ("seq 100001", "seq 0 200000", "seq -s, 1 0.5 60000", "seq 1e6", "seq -ws 100000000 1 200000"):
        out = bash.call_sync({"command": command})
        assert out["exitCode"] == 1 and "is more than 100000" in out["stderr"] and out["stdout"] == "", (command, out)
    assert bash.call_sync({"command": "seq -s, 2 2 10"})["stdout"] == "2,4,6,8,10\n"


@pytest.mark.parametrize(
    "command",
    [
        "echo {s} | grep -E '^(a|aa)+$'",
        "echo {s} | sed -E 's/^(a|aa)+$/x/'",
        "[[ {s} =~ ^(a|aa)+$ ]]",
        "[[ {s} == +(a|aa) ]]",  # extended globs become regular expressions
        "shopt -s extglob; case {s} in +(a|aa)) echo m;; esac",
    ],
)
def test_a_catastrophic_regex_stops_at_the_deadline_and_lets_other_threads_run(command: str) -> None:
    """Python's `re` backtracks without bound holding the GIL: `^(a|aa)+$` against forty `a`s
    and a `b` froze the whole worker (heartbeats included) far past bashTimeout."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=0.5))
    ticks = [0]
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.01):
            ticks[0] += 1

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    t0 = time.monotonic()
    try:
        out = bash.call_sync({"command": command.format(s="a" * 40 + "b")})
    finally:
        stop.set()
    assert out["exitCode"] == 124 and "time limit exceeded (0.5 s)" in out["stderr"], out
    assert time.monotonic() - t0 < 3.0  # bounded near the 0.5 s deadline (a loaded machine adds some)
    assert ticks[0] >= 20  # the GIL was free while the pattern was being matched
    assert bash.call_sync({"command": "echo aab | grep -E '^(a|aa)+b$'"})["stdout"] == "aab\n"


def test_jq_cannot_build_a_billion_numbers_nor_run_past_the_deadline() -> None:
    """jq's evaluator builds result lists whole: `[range(1e9)]` was one C call filling memory,
    `"x" * 3e8` another, `.+.` doubled a string thirty times within the timeout, and a `try`
    caught the deadline's error and went on."""
    bounded = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=20))  # the bounds, not the clock
    for program, error in [
        ("[range(1000000000)] | length", "range of 1000000000 numbers is more than 1000000"),
        ("[limit(3; range(100000000))]", "range of 100000000 numbers is more than 1000000"),
        ("[range(range(12) | . + 990000)] | length", "ranges made more than 10000000 numbers"),
        ('"x" * 300000000 | length', "string repeat of more than 16777216 characters"),
        ('reduce range(30) as $i ("x"; .+.) | length', "value of more than 16777216 items or characters"),
        ("[range(10)] | [combinations(7)] | length", "combinations of more than 1000000 arrays"),
    ]:
        out = bounded.call_sync({"command": f"jq -n '{program}'"})
        assert out["exitCode"] != 0 and error in out["stderr"], (program, out)
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=0.5))
    t0 = time.monotonic()
    for program in (
        '[range(300000) | tostring] | map(. + "x") | map(length) | add',
        "def f: try ([range(300)] | map(f) | length) catch 0; f",  # `try` catches the deadline
        'try ([range(300000) | tostring] | map(. + "x") | length) catch "caught"',
    ):
        out = bash.call_sync({"command": f"jq -n '{program}'"})
        assert out["exitCode"] == 124 and "time limit exceeded (0.5 s)" in out["stderr"], out
    assert time.monotonic() - t0 < 3
    out = bash.call_sync(
        {"command": "jq -nc '[range(0;10;3)], ([range(1000)] | add), (\"ab\" * 2), ([[1,2],[3]] | [combinations])'"}
    )
    assert out["stdout"] == '[0,3,6,9]\n499500\n"abab"\n[[1,3],[2,3]]\n'
    assert bash.call_sync({"command": "seq 300 | jq '[range(2000)] | length' | sort -u"})["stdout"] == "2000\n"


def test_shuf_refuses_a_range_it_would_build_whole() -> None:
    """`shuf -i 1-1000000000 -n 3` built the billion lines first: 6 GB, the shared loop held."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=2))
    for command in (
        "shuf -i 1-1000000000 -n 3",
        "shuf -r -n 100000000 -e a",
        "shuf --input-range=1-2000000",
        "shuf -i 1-2_000_000 -n 1",  # read as Python's int() reads it
        "shuf -r -n 2_000_000 -e x",
    ):
        out = bash.call_sync({"command": command})
        assert out == {"stdout": "", "stderr": "shuf: more than 1000000 lines\n", "exitCode": 1}, (command, out)
    assert bash.call_sync({"command": "shuf -i 5-9 | sort -n | tr -d '\\n'"})["stdout"] == "56789"
    assert bash.call_sync({"command": "shuf -r -n 5 -e a | wc -l"})["stdout"] == "5\n"


def test_a_pattern_regex_would_unroll_into_gigabytes_is_refused() -> None:
    """`regex` writes counted repeats out when it compiles: `(a{1000}){8000}` took 2 GB."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=2))
    out = bash.call_sync({"command": "echo a | grep -cE '(a{1000}){8000}'"})
    assert out["exitCode"] == 2 and "pattern too big once its repeats are counted out (8000000 items" in out["stderr"]
    out = bash.call_sync({"command": "echo 2024-01-05 | grep -oE '[0-9]{4}-[0-9]{2}'; echo aaa | sed 's/a\\{2\\}/x/'"})
    assert out["stdout"] == "2024-01\nxa\n"


def test_one_command_step_cannot_build_gigabytes() -> None:
    """Commands that built their whole output in one step, before any limit was looked at: a tar
    of bzip2 streams joined (6 KB made in the sandbox, 500 MB once decompressed), `tr` ranges over
    all of Unicode, `nl -w` / `expand -t` widths, `printf -v` widths, SQLite's `zeroblob`."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits(bash_timeout=5))
    ten = " ".join(["/t.tbz"] * 10)
    eight = " ".join(["/c.tbz"] * 8)
    made = bash.call_sync(
        {
            "command": "printf '%01000000d' 0 > /one; cat /one /one /one /one /one /one /one /one /one /one > /t; "
            f"tar -cjf /t.tbz /t; cat {ten} > /c.tbz; cat {eight} > /b.tbz; ls -l /b.tbz"
        }
    )
    assert int(made["stdout"].split()[4]) < 20_000, made  # ls -l's size column
    cases = {
        "tar -tjf /b.tbz": "more than 67108864 bytes once decompressed",
        "echo abc | tr -d $'\\x01-\\U10FFFF\\x01-\\U10FFFF'": "tr: set of more than 1000000 characters",
        "seq 3 | nl -w 100000000": "nl: width over 10000",
        "printf 'a\\tb' | expand -t 100000000": "expand: width over 10000",
        "printf -v y '%100000000s' x": "printf: field width over 1000000",
        "sqlite3 :memory: 'select length(zeroblob(300000000))'": "string or blob too big",
    }
    for command, error in cases.items():
        out = bash.call_sync({"command": command})
        assert error in out["stderr"] + out["stdout"], (command, out)
    out = bash.call_sync(
        {"command": "tar -tjf /t.tbz; seq 2 | nl -w 3; printf -v y '%3s' x; echo \"[$y]\"; echo ab | tr a-b x-y"}
    )
    assert out["stdout"] == "/t\n  1\t1\n  2\t2\n[  x]\nxy\n", out


def test_a_script_a_command_cannot_parse_is_a_shell_error() -> None:
    """xargs parses its input as a script: past the parser's token cap its error escaped the tool."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())
    out = bash.call_sync({"command": "seq 100000 | xargs echo | wc -c"})
    assert out["exitCode"] == 2 and out["stderr"].startswith("bash: syntax error: Too many tokens"), out


def test_a_pattern_substitution_cannot_build_gigabytes() -> None:
    """`${x//?/$x}` with a 30 KB `x`: 900 MB joined in one call, before the variables' cap looked."""
    bash = bash_tool(MemoryVFS(), env=_env(), limits=Limits())
    out = bash.call_sync({"command": 'x=$(printf "%30000s" ""); y=${x//?/$x}; echo ${#y}'})
    assert out["exitCode"] == 125 and "a pattern substitution would make more than 67108864 bytes" in out["stderr"]
    command = 'x=abcabc; echo ${x//b/XY} ${x//[ac]/} ${x//?/-}; x=$(printf "%3000s" ""); y=${x// /ab}; echo ${#y}'
    out = bash.call_sync({"command": command})
    assert out["stdout"] == "aXYcaXYc bb ------\n6000\n"


def test_gzip_moves_bytes_through_pipes_and_redirections(tmp_path: Path) -> None:
    import gzip

    vfs = RealDirVFS(str(tmp_path / "root"))
    bash = bash_tool(vfs, env=_env(), limits=Limits())
    payload = bytes(range(256)) * 4  # not UTF-8
    vfs.write("/bin.dat", payload)
    vfs.write("/host.gz", gzip.compress(payload))

    r = bash.call_sync({"command": "echo hello | gzip | gunzip; seq 1000 | gzip -9 | gzip -dc | tail -1"})
    assert r == {"stdout": "hello\n1000\n", "stderr": "", "exitCode": 0}
    # What the sandbox compresses, gzip elsewhere reads, and the other way round, byte for byte.
    r = bash.call_sync({"command": "gzip -c /bin.dat > /out.gz; cat /bin.dat | gzip >/piped.gz; zcat /host.gz >/back"})
    assert r["exitCode"] == 0, r
    assert gzip.decompress(vfs.read("/out.gz")) == payload
    assert gzip.decompress(vfs.read("/piped.gz")) == payload
    assert vfs.read("/back") == payload
    r = bash.call_sync({"command": "gunzip < /host.gz | gzip | gunzip - > /again"})
    assert r["exitCode"] == 0 and vfs.read("/again") == payload, r

    r = bash.call_sync({"command": "echo x | gzip -d"})
    assert r["exitCode"] == 1 and r["stderr"].startswith("gzip: stdin: "), r
    # A bomb read from stdin stops at the same bound as one read from a file.
    vfs.write("/bomb.gz", gzip.compress(b"\0" * (65 << 20)))
    r = bash.call_sync({"command": "gunzip < /bomb.gz | wc -c"})
    assert "more than 67108864 bytes once decompressed" in r["stderr"], r
    vfs.close()
