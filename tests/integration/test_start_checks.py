"""An `agentsDir` or `factory` the processes cannot load stops `regina web|worker|up` before they
start anything: one line naming the key, exit status 2 (not tracebacks from every child)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.harness.ports import free_port
from tests.harness.processes import REGINA, ROOT, clean_env


def _start(command: str, tmp_path: Path, *args: str, **settings: str) -> tuple[int, str]:
    env = clean_env()
    env.update(
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        PORT=str(free_port()),
        REGINA_AGENTS_DIR=str(ROOT / "tests" / "agents"),
        REGINA_VFS_DIR=str(tmp_path / "vfs"),
        REGINA_DATA_DIR=str(tmp_path / "data"),
    )
    env.update(settings)
    proc = subprocess.Popen(
        [REGINA, command, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        out = b"(still running after 40 s)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("command", ["web", "worker", "up"])
@pytest.mark.parametrize(
    ("setting", "needle"),
    [({"REGINA_AGENTS_DIR": "/nonexistent/agents"}, "agentsDir"), ({"REGINA_FACTORY": "no_such_factory"}, "factory")],
)
def test_an_unloadable_agents_dir_or_factory_is_one_line_and_exit_2(
    command: str, setting: dict[str, str], needle: str, tmp_path: Path
) -> None:
    code, out = _start(command, tmp_path, **setting)
    assert code == 2, out[-3000:]
    assert needle in out and "Traceback" not in out, out[-3000:]
    assert len(out.strip().splitlines()) <= 2, out[-3000:]


def test_a_worker_whose_redis_is_unreachable_says_so_in_one_line_and_exits(tmp_path: Path) -> None:
    port = free_port()
    code, out = _start("worker", tmp_path, REDIS_URL=f"redis://:sekrit@127.0.0.1:{port}/0")
    assert code not in (0, None), out[-3000:]
    assert "Traceback" not in out and "sekrit" not in out, out[-3000:]
    assert f"Redis at redis://:***@127.0.0.1:{port}/0 is unreachable" in out, out[-3000:]


@pytest.mark.parametrize(
    ("args", "settings", "needle"),
    [
        (["--port", "99999"], {}, "99999 is not in the range 1<=x<=65535"),
        (["--flower-port", "0"], {}, "0 is not in the range 1<=x<=65535"),
        ([], {"PORT": "0"}, "port 0 (from PORT or config `port`) does not work with `regina up`"),
    ],
)
def test_a_port_regina_up_cannot_use_is_a_clear_error(
    args: list[str], settings: dict[str, str], needle: str, tmp_path: Path
) -> None:
    code, out = _start("up", tmp_path, *args, **settings)
    assert code == 2, out[-3000:]
    assert needle in out and "Traceback" not in out, out[-3000:]
