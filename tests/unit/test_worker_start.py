"""A worker starts without LiteLLM and the MCP SDK, and imports them later between its greenlets.

Checked in a fresh interpreter (a subprocess) patched by gevent as a worker is: other tests in this
process may have imported anything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
from gevent import monkey; monkey.patch_all()
import json, sys, time
import gevent
import workers.celery_app, workers.signals, workers.tasks, workers.context
at_start = sorted(m for m in ("litellm", "mcp", "regina.mcp.toolset") if m in sys.modules)
from regina.runtime.models.setup import get_litellm, preload_litellm
pauses, ticks = [], []
def pause():
    pauses.append(1)
    gevent.sleep(0)
def ticker():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0)
tick = gevent.spawn(ticker)
gevent.spawn(preload_litellm, pause, before=("regina.mcp.toolset",)).get()
during = len(ticks)
tick.kill()
print(json.dumps({
    "at_start": at_start,
    "after": sorted(m for m in ("litellm", "mcp", "regina.mcp.toolset") if m in sys.modules),
    "configured": get_litellm().drop_params is True,
    "pauses": len(pauses),
    "ticks": during,
    "finders_left": sum(type(f).__name__ == "_PauseBetweenModules" for f in sys.meta_path),
}))
"""


def test_a_worker_starts_without_litellm_and_imports_it_between_greenlets() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["at_start"] == []  # the worker's modules leave both out of start-up
    assert got["after"] == ["litellm", "mcp", "regina.mcp.toolset"]
    assert got["configured"]
    assert got["pauses"] > 500  # one before every module LiteLLM and the SDK import
    assert got["ticks"] > 500  # another greenlet ran between them
    assert got["finders_left"] == 0
