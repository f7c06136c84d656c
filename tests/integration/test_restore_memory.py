"""A restore (an attach from storage) writes the backup to the instance's file as storage sends it,
instead of holding it whole in memory and copying it again to check and rebuild it.

Measured in a fresh process per case (`activation.open_current`, what an attach runs) against the
real storages: fs, S3 (moto server) and Redis. The peak is the process's VmHWM, reset just
before the restore (`/proc/self/clear_refs`): `ru_maxrss` would carry the test process's own
peak across the exec.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from regina.backups import backup_key
from regina.config import StorageSettings
from regina.vfs import SQLiteVFS
from storage import make_storage
from tests.harness.redis_server import RedisServer
from tests.harness.s3_server import FAKE_AWS_ENV, S3Server

ROOT = Path(__file__).resolve().parents[2]
FILES = 64  # of 1 MiB each: a backup of about 64 MiB

PROBE = """
import hashlib, json, os, sys
from regina import activation
from regina.backups import Backups
from regina.config import Settings, StorageSettings
from regina.factory_hooks import FactoryHooks
from regina.instances import InstanceRecord
from regina.journal import Journal
from regina.redis_conn import connect
from storage import make_storage

args = json.loads(sys.argv[1])
settings = Settings(
    redis=args["redis"], vfs_dir=args["vfs_dir"], vfs_backend=args["backend"], fs_root_path=args["root"],
    storage=StorageSettings(**args["storage"]),
)
client = connect(args["redis"])
storage = make_storage(settings.storage, args["redis"])
storage.list("instances/")  # connections and clients made before the measure
rec = InstanceRecord(**args["rec"])

def resident(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size starts again from the current one
before = resident("VmRSS")
opened = activation.open_current(settings, FactoryHooks(), Backups(client, storage), Journal(client), rec)
grown = resident("VmHWM") - before
digest = hashlib.sha256()
for n in range(args["files"]):
    digest.update(opened.vfs.read(f"/data/{n}.bin"))
opened.vfs.close()
print(json.dumps({"grown": grown, "restored": opened.restored, "digest": digest.hexdigest()}))
"""


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """A snapshot of an instance holding FILES files of 1 MiB, and the digest of their bytes."""
    vfs = SQLiteVFS(str(tmp_path_factory.mktemp("source") / "source.sqlite"), synchronous="OFF")
    rand, digest = random.Random(15), hashlib.sha256()
    for n in range(FILES):
        data = rand.randbytes(1 << 20)
        vfs.write(f"/data/{n}.bin", data)
        digest.update(data)
    image = vfs.snapshot()
    vfs.close()
    return image, digest.hexdigest()


@pytest.mark.parametrize("backend", ["sqlite", "realdir"])
@pytest.mark.parametrize("kind", ["fs", "s3", "redis"])
def test_a_restore_does_not_hold_the_backup_in_memory(
    kind: str,
    backend: str,
    backup: tuple[bytes, str],
    redis_server: RedisServer,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a 64 MiB backup in storage, named by a suspended instance's record
    image, digest = backup
    settings: dict[str, Any] = {
        "fs": {"type": "fs", "base_path": str(tmp_path / "storage")},
        "s3": {
            "type": "s3",
            "bucket": "regina-test",
            "prefix": f"restore-{uuid.uuid4().hex[:8]}/",
            "endpoint": s3_server.endpoint,
            "region": FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
        },
        "redis": {"type": "redis", "prefix": f"restore-{uuid.uuid4().hex[:8]}:"},
    }[kind]
    for name, value in FAKE_AWS_ENV.items():  # moto's, for this process's adapter and the probe's
        monkeypatch.setenv(name, value)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    storage = make_storage(StorageSettings(**settings), redis_server.url)
    assert storage is not None
    iid = f"openai-agent-{uuid.uuid4().hex[:12]}"
    key = backup_key(iid, 1, 1)
    storage.put(key, image)
    record = {
        "instance_id": iid,
        "definition_id": "openai-agent",
        "status": "suspended",
        "member": "",
        "epoch": 2,
        "created_at": 0.0,
        "last_active": 0.0,
        "backup_version": 1,
        "vfs_bytes": len(image),
        "backup_key": key,
    }
    args = {
        "redis": redis_server.url,
        "vfs_dir": str(tmp_path / "vfs"),
        "root": str(tmp_path / "root"),
        "backend": backend,
        "storage": settings,
        "rec": record,
        "files": FILES,
    }
    try:
        # When a fresh worker process restores it
        out = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(args)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        storage.delete(key)
        storage.close()
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # Then it holds every file as it was
    assert got["restored"] and got["digest"] == digest
    # and its peak memory grew by far less than the backup (it grew by twice the backup when it
    # was read whole, then copied into SQLite to be checked), except what the Redis client holds:
    # it gets a hash field's value in one reply, so about twice the value (its buffer and the
    # bytes), and nothing on top of that (three times before)
    limit = 2.5 * len(image) if kind == "redis" else len(image) / 4
    assert got["grown"] < limit, f"peak grew {got['grown'] / len(image):.2f} x the backup"
