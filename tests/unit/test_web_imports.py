"""A web process imports the HTTP adapter and the publishing side of Celery, never the worker.

Checked in a fresh interpreter (a subprocess): other tests in this process may have imported
anything already. Redis points at a closed port, so building the app contacts no server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Modules only a worker needs; the web must not pay for them (or connect their signals).
WORKER_ONLY = ("workers.tasks", "workers.signals", "regina.host", "regina.runtime.loop", "celery.worker", "litellm")

PROBE = """
import json, sys
{imports}
print(json.dumps(sorted(m for m in {worker_only!r} if m in sys.modules)))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "imports",
    [
        "import api.wsgi",
        "from api import create_app; create_app()",
        "import workers.local; workers.local.local_coordinator()",
    ],
)
def test_web_app_leaves_the_worker_out(imports: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0",
        "REGINA_AGENTS_DIR": str(tmp_path),
    }
    env.pop("REGINA_CONFIG", None)
    probe = PROBE.format(imports=imports, worker_only=WORKER_ONLY)
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_web_process_loads_its_settings_once(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0",
        "REGINA_AGENTS_DIR": str(tmp_path),
    }
    env.pop("REGINA_CONFIG", None)
    probe = """
import regina.config as config
calls = []
load = config.load_settings
def counting(*args, **kwargs):
    calls.append(1)
    return load(*args, **kwargs)
config.load_settings = counting
import api.wsgi, celeryconfig, workers.local
workers.local.local_coordinator()
print(len(calls))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1"
