"""A backup's snapshot never stops the worker's gevent hub: whatever takes it (an SQLite file, a
memory VFS, a realdir tree, a factory `backup` hook) runs in the snapshot thread pool while the
hub keeps serving every other instance.

Checked in a fresh interpreter patched by gevent as a worker is, with a real `InstanceHost` over
the test's Redis and Redis storage: a greenlet ticks during the suspend and, at each tick, looks
at what the other OS threads are doing (`sys._current_frames`). A tick that sees a thread inside
the snapshot proves the hub ran while it was taken; on the hub, no tick can run until it is done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.harness.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "tests" / "agents"

PROBE = """
from gevent import monkey; monkey.patch_all()
import hashlib, json, os, sys, threading, time
import gevent
from regina.config import Settings, StorageSettings
from regina.factory_hooks import load_hooks
from regina.host import InstanceHost
from regina.ids import new_instance_id
from regina.instances import InstanceStore
from regina.redis_conn import connect
from regina.registry import AgentRegistry
from storage.redis import RedisStorage

url, tmp, backend, factory, agents = sys.argv[1:]
settings = Settings(
    redis=url, agents_dir=agents, vfs_dir=os.path.join(tmp, "vfs"), vfs_backend=backend,
    fs_root_path=os.path.join(tmp, "root"), storage=StorageSettings(type="redis"), factory=factory or None,
)
client = connect(url)
storage = RedisStorage(url, prefix="offhub:")
registry = AgentRegistry(settings)
registry.load()
host = InstanceHost(settings, registry, client, storage, load_hooks(settings.factory), "offhub@test")
iid = new_instance_id("openai-agent")
InstanceStore(client).create(iid, "openai-agent", host.member_id)
host.attach(iid, 1)
vfs = host.active[iid].vfs
# A large VFS: many files (a realdir snapshot reads each one), 48 MiB in all.
for n in range(1536):
    vfs.write(f"/data/{n // 64}/{n}.bin", hashlib.sha256(str(n).encode()).digest() * 1024)

SNAPSHOTTERS = {"snapshot", "backup"}  # the VFS's snapshot, the factory's backup hook
hub = threading.get_ident()
seen, ticks, done = [], [0], [False]

def snapshot_elsewhere():
    for ident, frame in sys._current_frames().items():
        while ident != hub and frame is not None:
            if frame.f_code.co_name in SNAPSHOTTERS:
                return True
            frame = frame.f_back
    return False

def ticker():
    while not done[0]:
        ticks[0] += 1
        seen.append(snapshot_elsewhere())
        gevent.sleep(0.002)

tick = gevent.spawn(ticker)
gevent.sleep(0.01)
answer = host.suspend(iid)
done[0] = True
tick.join()
print(json.dumps({"answer": answer, "ticks": ticks[0], "during": sum(seen)}))
"""

#: A factory whose `backup` hook does real work (compressing the instance's file), as one might.
FACTORY = """
import os, zlib

def backup(instance_id, config):
    with open(os.path.join(config.vfs_dir, instance_id + ".sqlite"), "rb") as fh:
        return zlib.compress(fh.read(), 9)
"""


@pytest.mark.parametrize("kind", ["sqlite", "memory", "realdir", "factory"])
def test_the_hub_keeps_running_while_a_large_snapshot_is_taken(
    kind: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a worker (gevent-patched) holding an instance with 48 MiB in 1536 files
    factory = ""
    if kind == "factory":
        factory = str(tmp_path / "offhub_factory.py")
        Path(factory).write_text(textwrap.dedent(FACTORY))
    backend = "sqlite" if kind == "factory" else kind
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # When it suspends the instance (its snapshot taken, then stored) while a greenlet ticks
    out = subprocess.run(
        [sys.executable, "-c", PROBE, redis_server.url, str(tmp_path), backend, factory, str(AGENTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # Then it was backed up, and the greenlet ticked while another thread was taking the snapshot
    # (on the hub it could not tick until the snapshot was done: `during` would be 0)
    assert got["answer"]["backedUp"], got
    assert got["during"] >= 1, got
