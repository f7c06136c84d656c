"""One storage contract run against every adapter on real servers: fs, S3 (moto server), Redis."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from regina.config import StorageSettings, load_settings
from regina.errors import ConfigError, StorageError
from storage import Storage, make_storage
from storage.fs import TEMP_SUFFIX, FsStorage
from storage.redis import RedisStorage
from storage.s3 import S3Storage
from tests.harness.redis_server import RedisServer
from tests.harness.s3_server import FAKE_AWS_ENV, S3Server
from tests.harness.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "regina-backups"
#: A Redis URL nothing listens on (port 1 is reserved and refused at once).
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Moto's fake credentials for this test only; no profile or real key can leak in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(params=["fs", "s3", "redis"])
def storage_settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    aws_env: None,
    s3_server: S3Server,
    redis_server: RedisServer,
) -> StorageSettings:
    """Settings for one adapter; a fresh directory or key prefix per test keeps tests apart."""
    prefix = f"test-{uuid.uuid4().hex[:8]}/"
    if request.param == "fs":
        return StorageSettings(type="fs", base_path=str(tmp_path / "backups"))
    if request.param == "s3":
        return StorageSettings(
            type="s3",
            bucket=BUCKET,
            prefix=prefix,
            endpoint=s3_server.endpoint,
            region=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
        )
    return StorageSettings(type="redis", prefix=prefix)


@pytest.fixture
def storage(storage_settings: StorageSettings, redis_server: RedisServer) -> Iterator[Storage]:
    adapter = make_storage(storage_settings, redis_server.url)
    assert adapter is not None
    yield adapter
    adapter.close()


# --- the contract -------------------------------------------------------------------------------


def test_adapter_implements_the_storage_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)


def test_put_then_get_returns_the_same_bytes(storage: Storage) -> None:
    storage.put("instances/a/vfs", b"snapshot-1")
    assert storage.get("instances/a/vfs") == b"snapshot-1"


def test_put_overwrites_the_previous_value(storage: Storage) -> None:
    storage.put("k", b"old value, longer than the new one")
    storage.put("k", b"new")
    assert storage.get("k") == b"new"


def test_get_of_a_missing_key_is_none(storage: Storage) -> None:
    assert storage.get("never/written") is None


def test_empty_blob_is_stored_and_is_not_none(storage: Storage) -> None:
    storage.put("empty", b"")
    assert storage.get("empty") == b""


def test_delete_removes_the_key_and_missing_keys_are_fine(storage: Storage) -> None:
    storage.put("gone", b"x")
    storage.delete("gone")
    assert storage.get("gone") is None
    assert storage.list() == []
    storage.delete("gone")
    storage.delete("never/existed")


def test_list_returns_sorted_keys_filtered_by_prefix(storage: Storage) -> None:
    # Given keys written out of order, one of them sharing a textual prefix with a directory
    keys = ["instances/b/vfs", "instances/a/vfs", "other", "instances/a/meta", "instances-x/vfs"]
    for key in keys:
        storage.put(key, key.encode())
    # Then listing is sorted and a prefix is a plain string prefix, not a directory
    assert storage.list() == sorted(keys)
    assert storage.list("") == sorted(keys)
    assert storage.list("instances/") == ["instances/a/meta", "instances/a/vfs", "instances/b/vfs"]
    assert storage.list("instances/a") == ["instances/a/meta", "instances/a/vfs"]
    assert storage.list("instances") == sorted(k for k in keys if k.startswith("instances"))
    assert storage.list("instances/a/vfs") == ["instances/a/vfs"]
    assert storage.list("nothing/here/") == []


def test_nested_keys_roundtrip(storage: Storage) -> None:
    key = "instances/demo-1f2e3d/snapshots/2024/vfs.sqlite"
    storage.put(key, b"deep")
    assert storage.get(key) == b"deep"
    assert storage.list("instances/demo-1f2e3d/") == [key]


def test_large_blob_roundtrips(storage: Storage) -> None:
    blob = random.Random(7).randbytes(20 * 1024 * 1024)
    storage.put("large", blob)
    assert storage.get("large") == blob


def test_get_into_writes_the_stored_bytes_to_a_file(storage: Storage, tmp_path: Path) -> None:
    # Given a large blob and a small one
    blob = random.Random(8).randbytes(20 * 1024 * 1024)
    storage.put("instances/a/vfs.1.1", blob)
    storage.put("small", b"tiny")
    # When each is read into a file
    with open(tmp_path / "large", "wb") as out:
        assert storage.get_into("instances/a/vfs.1.1", out) is True
    with open(tmp_path / "small", "wb") as out:
        assert storage.get_into("small", out) is True
    # Then the files hold exactly the stored bytes
    assert (tmp_path / "large").read_bytes() == blob
    assert (tmp_path / "small").read_bytes() == b"tiny"


def test_get_into_of_a_missing_key_is_false_and_writes_nothing(storage: Storage, tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as out:
        assert storage.get_into("never/written/vfs", out) is False
    assert (tmp_path / "out").read_bytes() == b""


def test_binary_data_with_every_byte_value_roundtrips(storage: Storage) -> None:
    blob = bytes(range(256)) * 4 + b"\r\n\x00\xff"
    storage.put("binary", blob)
    assert storage.get("binary") == blob


def test_concurrent_puts_to_different_keys_all_land(storage: Storage) -> None:
    blobs = {f"concurrent/{i}": os.urandom(64 * 1024) for i in range(8)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: storage.put(*item), blobs.items()))
    assert storage.list("concurrent/") == sorted(blobs)
    for key, blob in blobs.items():
        assert storage.get(key) == blob


def test_concurrent_puts_to_one_key_leave_one_whole_value(storage: Storage) -> None:
    blobs = [bytes([i]) * (256 * 1024) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda blob: storage.put("contended", blob), blobs))
    assert storage.get("contended") in blobs
    assert storage.list() == ["contended"]


def test_close_keeps_the_data_for_the_next_adapter(
    storage: Storage, storage_settings: StorageSettings, redis_server: RedisServer
) -> None:
    storage.put("kept", b"after close")
    storage.close()
    storage.close()  # idempotent: shutdown paths may close twice
    reopened = make_storage(storage_settings, redis_server.url)
    assert reopened is not None
    assert reopened.get("kept") == b"after close"
    reopened.close()


# --- fs ----------------------------------------------------------------------------------------


def test_fs_failed_write_keeps_the_old_value(tmp_path: Path) -> None:
    # Given a stored value
    fs = FsStorage(tmp_path)
    fs.put("instances/a/vfs", b"old")
    # When the disk refuses the new write halfway (a file-size limit makes write() fail with EFBIG)
    limit = 1024 * 1024
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(StorageError, match="instances/a/vfs"):
            fs.put("instances/a/vfs", b"n" * (4 * limit))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    # Then readers still see the old value and no temp file is left behind
    assert fs.get("instances/a/vfs") == b"old"
    assert os.listdir(tmp_path / "instances" / "a") == ["vfs"]


def test_fs_process_killed_mid_write_leaves_a_whole_value(tmp_path: Path) -> None:
    # Given a process rewriting a key with two alternating 8 MB blobs
    child = textwrap.dedent(
        f"""
        from storage.fs import FsStorage
        fs = FsStorage({str(tmp_path)!r})
        blobs = [b"A" * (8 << 20), b"B" * (8 << 20)]
        i = 0
        while True:
            fs.put("instances/a/vfs", blobs[i % 2])
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO_ROOT)
    try:
        # When it is killed while a temp file is being written
        wait_until(lambda: (tmp_path / "instances" / "a" / "vfs").exists(), what="first put")
        target_dir = tmp_path / "instances" / "a"
        wait_until(
            lambda: any(n.endswith(TEMP_SUFFIX) for n in os.listdir(target_dir)),
            interval=0.001,
            what="a write in flight",
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    # Then the key holds one whole blob, and a leftover temp file is not listed as a key
    fs = FsStorage(tmp_path)
    assert fs.get("instances/a/vfs") in (b"A" * (8 << 20), b"B" * (8 << 20))
    assert fs.list() == ["instances/a/vfs"]
    fs.put("instances/a/vfs", b"after the crash")
    assert fs.get("instances/a/vfs") == b"after the crash"
    # ... and once it is old, the leftover goes with the next delete in its directory, and the
    # directory with the last key in it
    leftovers = [n for n in os.listdir(target_dir) if n.endswith(TEMP_SUFFIX)]
    assert leftovers
    long_ago = time.time() - 3600
    for name in leftovers:
        os.utime(target_dir / name, (long_ago, long_ago))
    fs.delete("instances/a/vfs")
    assert not target_dir.exists()
    assert fs.list() == []


@pytest.mark.parametrize(
    "key",
    [
        "../outside",
        "a/../../outside",
        "/etc/passwd",
        "",
        ".",
        "a//b",
        "./a",
        "a/",
        "x" + TEMP_SUFFIX,
        "a\x00b",
    ],
)
def test_fs_rejects_keys_that_escape_or_alias(tmp_path: Path, key: str) -> None:
    fs = FsStorage(tmp_path / "base")
    for call in (lambda: fs.put(key, b"x"), lambda: fs.get(key), lambda: fs.delete(key)):
        with pytest.raises(StorageError, match="key"):
            call()
    assert not (tmp_path / "outside").exists()


def test_fs_rejects_a_key_through_a_symlink_leading_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "link").symlink_to(outside)
    fs = FsStorage(tmp_path / "base")
    with pytest.raises(StorageError, match="escapes"):
        fs.put("link/x", b"x")
    assert list(outside.iterdir()) == []


# --- adapter errors name the key ----------------------------------------------------------------


def test_s3_errors_name_the_key(aws_env: None, s3_server: S3Server) -> None:
    s3 = S3Storage("no-such-bucket", endpoint=s3_server.endpoint, region="us-east-1")
    with pytest.raises(StorageError, match="'instances/a/vfs'.*no-such-bucket"):
        s3.get("instances/a/vfs")
    with pytest.raises(StorageError, match="'instances/a/vfs'"):
        s3.put("instances/a/vfs", b"x")
    s3.close()


def test_redis_errors_name_the_key() -> None:
    rs = RedisStorage(DEAD_REDIS_URL)
    with pytest.raises(StorageError, match="'instances/a/vfs'"):
        rs.put("instances/a/vfs", b"x")
    rs.close()


# --- make_storage -------------------------------------------------------------------------------


def test_make_storage_defaults_to_the_cluster_redis_and_null_means_no_storage() -> None:
    default = make_storage(StorageSettings(), DEAD_REDIS_URL)
    assert isinstance(default, RedisStorage) and default.hash_name == "regina:storage"
    assert default._client.connection_pool.connection_kwargs["port"] == 1  # the cluster's URL
    default.close()
    assert make_storage(StorageSettings(type=None), DEAD_REDIS_URL) is None


def test_make_storage_s3_without_a_bucket_names_storage_bucket() -> None:
    with pytest.raises(ConfigError, match=r"storage\.bucket is required for type s3"):
        make_storage(StorageSettings(type="s3"), DEAD_REDIS_URL)


def test_make_storage_fs_without_a_base_path_names_storage_base_path() -> None:
    with pytest.raises(ConfigError, match=r"storage\.basePath is required for type fs"):
        make_storage(StorageSettings(type="fs"), DEAD_REDIS_URL)


def test_make_storage_redis_prefers_storage_url_over_the_cluster_redis(redis_server: RedisServer) -> None:
    adapter = make_storage(StorageSettings(type="redis", url=redis_server.url), DEAD_REDIS_URL)
    assert isinstance(adapter, RedisStorage)
    adapter.put("k", b"v")
    assert adapter.get("k") == b"v"
    adapter.delete("k")
    adapter.close()


def test_make_storage_from_environment_settings(tmp_path: Path) -> None:
    settings = load_settings(environ={"REGINA_STORAGE__TYPE": "fs", "REGINA_STORAGE__BASE_PATH": str(tmp_path / "b")})
    adapter = make_storage(settings.storage, settings.redis)
    assert isinstance(adapter, FsStorage)
    assert adapter.base_path == (tmp_path / "b").resolve()


# --- redis: one hash per folder -----------------------------------------------------------------


def test_redis_storage_keeps_each_instances_backups_in_a_hash_of_their_own(redis_server: RedisServer) -> None:
    # Given backups of many instances
    rs = RedisStorage(redis_server.url, prefix="folders:")
    raw = redis.Redis.from_url(redis_server.url)
    for n in range(200):
        rs.put(f"instances/i{n}/vfs.1.1", b"x")
    rs.put("instances/i7/vfs.1.2", b"y")
    # Then one instance's keys are the fields of its own hash, so listing them (every DELETE does)
    # reads that hash only, whatever the number of instances
    assert raw.hkeys("folders:regina:storage:instances/i7") == [b"vfs.1.1", b"vfs.1.2"]
    assert not raw.exists("folders:regina:storage")
    assert rs.list("instances/i7/") == ["instances/i7/vfs.1.1", "instances/i7/vfs.1.2"]
    assert len(rs.list("instances/")) == 201 and len(rs.list("instances/i19")) == 11
    # And deleting them leaves nothing behind
    for name in rs.list("instances/i7/"):
        rs.delete(name)
    assert not raw.exists("folders:regina:storage:instances/i7")
    for name in rs.list(""):
        rs.delete(name)
    assert raw.keys("folders:*") == []
    rs.close()
    raw.close()


def test_redis_storage_reads_and_deletes_keys_written_before_the_split(redis_server: RedisServer) -> None:
    # Given a backup written in the one hash that held every key before
    rs = RedisStorage(redis_server.url, prefix="legacy:")
    raw = redis.Redis.from_url(redis_server.url)
    raw.hset("legacy:regina:storage", "instances/old/vfs.2.5", b"old backup")
    # Then it is found, listed and deleted like any other
    assert rs.get("instances/old/vfs.2.5") == b"old backup"
    assert rs.list("instances/old/") == ["instances/old/vfs.2.5"]
    rs.delete("instances/old/vfs.2.5")
    assert rs.get("instances/old/vfs.2.5") is None and raw.keys("legacy:*") == []
    rs.close()
    raw.close()
