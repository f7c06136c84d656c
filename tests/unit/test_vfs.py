"""The three VFS backends behave the same; realdir cannot be escaped; snapshots are consistent."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from regina import errors
from regina.errors import ConfigError, VFSError
from regina.vfs import MemoryVFS, RealDirVFS, SQLiteVFS, open_vfs, restore_snapshot
from regina.vfs.base import VFS
from regina.vfs.snapshot import SCHEMA, check_snapshot, database_image, restore_snapshot_from
from regina.vfs.sqlite_files import create_parked, empty_image, read_meta

ROOT = Path(__file__).resolve().parents[2]


def _make(kind: str, tmp_path: Path) -> SQLiteVFS | MemoryVFS | RealDirVFS:
    if kind == "sqlite":
        return SQLiteVFS(str(tmp_path / "inst.sqlite"))
    if kind == "sqlite-parked":  # a spawn's: written from an in-memory image, connected on first use
        return create_parked(str(tmp_path / "inst.sqlite"))
    if kind == "memory":
        return MemoryVFS()
    return RealDirVFS(str(tmp_path / "root"))


@pytest.fixture(params=["sqlite", "sqlite-parked", "memory", "realdir"])
def vfs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteVFS | MemoryVFS | RealDirVFS]:
    v = _make(request.param, tmp_path)
    yield v
    v.close()


def test_is_a_vfs(vfs: VFS) -> None:
    assert isinstance(vfs, VFS)


def test_write_read_creates_parents(vfs: VFS) -> None:
    vfs.write("/a/b/c.txt", b"hello")
    assert vfs.read("/a/b/c.txt") == b"hello"
    assert vfs.read("a/./b/../b/c.txt") == b"hello"
    assert vfs.stat("/a/b").is_dir
    assert vfs.listdir("/") == ["a"]
    vfs.write("/a/b/c.txt", b"x")
    assert vfs.read("/a/b/c.txt") == b"x"


def test_read_range_spans_data_and_appended_chunks(vfs: VFS) -> None:
    """read_range serves part of a file without loading the rest (what read_file shows of a big
    one); in SQLite a file is entries.data then its appended chunks, read across."""
    vfs.write("/f", b"0123456789")
    vfs.append("/f", b"abc")
    vfs.append("/f", b"")
    vfs.append("/f", b"defgh")
    whole = vfs.read("/f")
    assert whole == b"0123456789abcdefgh"
    for offset in range(len(whole) + 2):
        for length in (0, 1, 3, 8, 100):
            assert vfs.read_range("/f", offset, length) == whole[offset : offset + length], (offset, length)
    vfs.write("/empty", b"")
    assert vfs.read_range("/empty", 0, 10) == b""
    vfs.mkdir("/d")
    with pytest.raises(errors.IsADirectory):
        vfs.read_range("/d", 0, 1)
    with pytest.raises(errors.NoSuchPath):
        vfs.read_range("/missing", 0, 1)
    with pytest.raises(VFSError, match="byte range"):
        vfs.read_range("/f", -1, 1)


def test_binary_roundtrip_and_append(vfs: VFS) -> None:
    blob = bytes(range(256))
    vfs.write("/bin.dat", blob)
    vfs.append("/bin.dat", b"\x00\xff")
    assert vfs.read("/bin.dat") == blob + b"\x00\xff"
    vfs.append("/new/dir/log.jsonl", b'{"a":1}\n')
    vfs.append("/new/dir/log.jsonl", b'{"b":2}\n')
    assert vfs.read("/new/dir/log.jsonl") == b'{"a":1}\n{"b":2}\n'
    assert vfs.stat("/new/dir/log.jsonl").size == 16


def test_read_errors(vfs: VFS) -> None:
    with pytest.raises(VFSError, match="no such file"):
        vfs.read("/missing")
    vfs.mkdir("/d")
    with pytest.raises(VFSError, match="is a directory"):
        vfs.read("/d")
    with pytest.raises(VFSError, match="is a directory"):
        vfs.write("/d", b"x")
    with pytest.raises(VFSError, match="is a directory"):
        vfs.append("/d", b"x")
    with pytest.raises(VFSError):
        vfs.stat("/missing")


def test_file_as_parent_is_refused(vfs: VFS) -> None:
    vfs.write("/f", b"x")
    with pytest.raises(VFSError):
        vfs.write("/f/g", b"y")
    with pytest.raises(VFSError):
        vfs.mkdir("/f")


def test_mkdir_listdir(vfs: VFS) -> None:
    vfs.mkdir("/x/y/z")
    vfs.mkdir("/x/y/z")  # exists: no error
    assert vfs.listdir("/x") == ["y"]
    with pytest.raises(VFSError):
        vfs.mkdir("/p/q", parents=False)
    vfs.write("/x/b", b"")
    vfs.write("/x/a", b"")
    assert vfs.listdir("/x") == ["a", "b", "y"]
    with pytest.raises(VFSError, match="not a directory"):
        vfs.listdir("/x/a")
    with pytest.raises(VFSError):
        vfs.listdir("/nope")


def test_remove(vfs: VFS) -> None:
    vfs.write("/d/e/f", b"1")
    vfs.write("/d2", b"keep")  # shares a prefix with /d: must survive
    vfs.write("/d.txt", b"keep")
    with pytest.raises(VFSError, match="not empty"):
        vfs.remove("/d")
    vfs.remove("/d/e/f")
    assert not vfs.exists("/d/e/f")
    vfs.write("/d/e/f", b"1")
    vfs.remove("/d", recursive=True)
    assert not vfs.exists("/d") and not vfs.exists("/d/e")
    assert vfs.read("/d2") == b"keep" and vfs.read("/d.txt") == b"keep"
    with pytest.raises(VFSError):
        vfs.remove("/d")
    with pytest.raises(VFSError):
        vfs.remove("/")


def test_rename(vfs: VFS) -> None:
    vfs.write("/src/a/1.txt", b"1")
    vfs.write("/src/b.txt", b"b")
    vfs.write("/srcx", b"other")
    vfs.mkdir("/dst")
    vfs.rename("/src", "/dst/moved")
    assert not vfs.exists("/src")
    assert vfs.read("/dst/moved/a/1.txt") == b"1"
    assert vfs.listdir("/dst/moved") == ["a", "b.txt"]
    assert vfs.read("/srcx") == b"other"
    vfs.rename("/dst/moved/b.txt", "/top.txt")
    assert vfs.read("/top.txt") == b"b"
    vfs.write("/over.txt", b"old")
    vfs.rename("/top.txt", "/over.txt")  # replaces a file
    assert vfs.read("/over.txt") == b"b"
    with pytest.raises(VFSError, match="into itself"):
        vfs.rename("/dst", "/dst/moved/inner")
    with pytest.raises(VFSError):
        vfs.rename("/missing", "/x")
    with pytest.raises(VFSError):
        vfs.rename("/over.txt", "/no/such/dir/x")


def test_chmod_stat(vfs: VFS) -> None:
    vfs.write("/s.sh", b"echo hi\n")
    vfs.chmod("/s.sh", 0o755)
    st = vfs.stat("/s.sh")
    assert st.mode & 0o777 == 0o755 and st.size == 8 and not st.is_dir and st.mtime > 0
    assert vfs.stat("/").is_dir


def test_meta(vfs: SQLiteVFS | MemoryVFS | RealDirVFS) -> None:
    assert vfs.get_meta("epoch") is None
    vfs.set_meta("epoch", "3")
    vfs.set_meta("epoch", "4")
    assert vfs.get_meta("epoch") == "4"
    if not isinstance(vfs, RealDirVFS):
        assert vfs.get_meta("vfs.schema") == "1"
    assert "epoch" not in vfs.listdir("/")


def test_snapshot_roundtrip_into_every_backend(vfs: SQLiteVFS | MemoryVFS | RealDirVFS, tmp_path: Path) -> None:
    vfs.write("/notes/a.txt", b"alpha")
    vfs.write("/bin.dat", b"\x00\xff\x01")
    vfs.mkdir("/empty")
    vfs.set_meta("version", "7")
    data = vfs.snapshot()
    assert data.startswith(b"SQLite format 3\x00")

    restore_snapshot(str(tmp_path / "restored.sqlite"), data)
    restored: list[SQLiteVFS | MemoryVFS | RealDirVFS] = [
        SQLiteVFS(str(tmp_path / "restored.sqlite")),
        MemoryVFS.from_snapshot(data),
    ]
    RealDirVFS.restore_snapshot(str(tmp_path / "restored-root"), data)
    restored.append(RealDirVFS(str(tmp_path / "restored-root")))
    for r in restored:
        assert r.read("/notes/a.txt") == b"alpha"
        assert r.read("/bin.dat") == b"\x00\xff\x01"
        assert r.stat("/empty").is_dir
        assert r.get_meta("version") == "7"
        r.close()


def _image_as_before(source: sqlite3.Connection) -> bytes:
    """`database_image` as it was (four copies of the database at once): the reference the
    snapshot bytes must stay equal to."""
    mem = sqlite3.connect(":memory:")
    try:
        source.backup(mem)
        image = mem.serialize()
        return image[:18] + b"\x01\x01" + image[20:] if image[18:20] == b"\x02\x02" else image
    finally:
        mem.close()


@pytest.mark.parametrize("case", ["wal", "wal-pending", "rollback", "page-1024", "memory", "restored-memory"])
def test_a_snapshot_is_byte_for_byte_what_it_was(case: str, tmp_path: Path) -> None:
    """Serialized from the source now (half the memory), a snapshot is still the same bytes as
    through a backup into memory: backups before and after the change restore alike."""
    path = str(tmp_path / "inst.sqlite")
    if case == "page-1024":
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA page_size = 1024")
            conn.executescript(SCHEMA)
    vfs = MemoryVFS() if case == "memory" else SQLiteVFS(path)
    if case == "restored-memory":  # a memdb database (deserialized), read without a copy
        vfs.write("/first", b"1")
        vfs.close()
        vfs = MemoryVFS.from_snapshot(open(path, "rb").read())
    for i in range(40):
        vfs.write(f"/d{i % 3}/f{i}", os.urandom(300 + 700 * i))
        vfs.append("/log", f"line {i}\n".encode())
    vfs.set_meta("backupKey", "instances/x/vfs.1.1")
    if case in ("memory", "restored-memory"):
        with vfs._lock:
            source = vfs._connection()
            assert database_image(source) == _image_as_before(source)
        return
    if case != "wal-pending":
        vfs.close()  # checkpointed: the file alone; else its last changes wait in the WAL
    if case == "rollback":
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode = DELETE")
    with contextlib.closing(sqlite3.connect(path)) as source:
        image = database_image(source)
        assert image == _image_as_before(source)
    assert image[18:20] == b"\x01\x01"
    if case == "wal-pending":
        assert vfs.snapshot() == image
        vfs.close()


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import regina
    from regina.vfs import SQLiteVFS
    vfs = SQLiteVFS(sys.argv[1], connect=False)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = vfs.snapshot()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(regina.__file__, grown * 1024, len(data))
    """
)


def test_a_snapshot_takes_about_twice_the_file_not_four_times(tmp_path: Path) -> None:
    """Every suspend and checkpoint takes one: a 100 MiB instance used to add 410 MiB to its
    worker's peak (in-memory copy, its serialized copy, a slice and the joined result)."""
    # Given a 64 MiB instance file
    path = str(tmp_path / "big.sqlite")
    vfs = SQLiteVFS(path, synchronous="OFF")
    blob = os.urandom(1 << 20)
    for i in range(64):
        vfs.write(f"/f{i}", blob)
    vfs.close()
    # When a fresh process snapshots it
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, path], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, grown, size = proc.stdout.split()
    assert Path(module).parent.parent == ROOT  # this checkout's code ran
    # Then its peak memory grew by at most 2.2 times the snapshot's size
    assert int(size) >= 64 << 20
    assert int(grown) <= 2.2 * int(size), f"peak grew {int(grown) / int(size):.2f} x the file"


def test_restore_replaces_existing_and_drops_stale_wal(tmp_path: Path) -> None:
    path = str(tmp_path / "i.sqlite")
    v = SQLiteVFS(path)
    v.write("/old", b"old")
    v.close()
    m = MemoryVFS()
    m.write("/new", b"new")
    restore_snapshot(path, m.snapshot())
    assert not os.path.exists(path + "-wal")
    r = SQLiteVFS(path)
    assert r.listdir("/") == ["new"]
    r.close()


def test_restore_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(VFSError):
        restore_snapshot(str(tmp_path / "x.sqlite"), b"not a database")
    assert not (tmp_path / "x.sqlite").exists()
    with pytest.raises(VFSError):
        MemoryVFS.from_snapshot(b"SQLite format 3\x00" + b"\x00" * 100)


def test_a_streamed_restore_with_no_backup_changes_nothing(tmp_path: Path) -> None:
    # Given an instance's file and realdir tree
    path = str(tmp_path / "i.sqlite")
    v = SQLiteVFS(path)
    v.write("/kept", b"kept")
    v.close()
    before = Path(path).read_bytes()
    RealDirVFS(str(tmp_path / "root")).write("/kept", b"kept")
    # When storage has no backup to stream (after writing nothing)
    assert restore_snapshot_from(path, lambda out: False) is False
    assert RealDirVFS.restore_from(str(tmp_path / "root"), lambda out: False) is False
    # Then both stay as they were, and no temp file is left beside them
    assert Path(path).read_bytes() == before
    assert (tmp_path / "root" / "kept").read_bytes() == b"kept"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".restore-")]


def test_a_streamed_restore_checks_the_image_in_its_temp_file(tmp_path: Path) -> None:
    # Given an instance's file, and a damaged image (a page of the good one overwritten)
    path = str(tmp_path / "i.sqlite")
    v = SQLiteVFS(path)
    v.write("/kept", b"kept")
    v.close()
    before = Path(path).read_bytes()
    m = MemoryVFS()
    for i in range(20):
        m.write(f"/f{i}", os.urandom(3000))
    good = m.snapshot()
    m.close()
    bad = good[:4096] + b"\xff" * 4096 + good[8192:]

    def streaming(image: bytes) -> Callable[[BinaryIO], bool]:
        def fill(out: BinaryIO) -> bool:
            for at in range(0, len(image), 1000):
                out.write(image[at : at + 1000])
            return True

        return fill

    # When it is streamed in, to the file or to a realdir tree
    with pytest.raises(VFSError):
        restore_snapshot_from(path, streaming(bad))
    with pytest.raises(VFSError):
        RealDirVFS.restore_from(str(tmp_path / "root"), streaming(bad))
    # Then nothing is replaced and no temp file stays
    assert Path(path).read_bytes() == before
    assert not (tmp_path / "root").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".restore-")]
    # While a good image lands byte for byte, with nothing left beside it (WAL header or not)
    for image in (good, empty_image({"k": "v"})):
        assert restore_snapshot_from(path, streaming(image)) is True
        assert Path(path).read_bytes() == image
        assert sorted(os.listdir(tmp_path)) == ["i.sqlite"]
    assert RealDirVFS.restore_from(str(tmp_path / "root"), streaming(good)) is True
    assert len(os.listdir(tmp_path / "root")) == 20
    assert sorted(os.listdir(tmp_path)) == ["i.sqlite", "root", "root.meta.json"]


def test_a_streamed_restore_waits_on_its_fsync_and_check_where_the_caller_says(tmp_path: Path) -> None:
    # Before: the fsync of the whole image and its integrity check ran on the calling thread,
    # a worker's gevent hub (≈ 0.6 s per 100 MB here), stopping every other chat meanwhile.
    path = str(tmp_path / "i.sqlite")
    m = MemoryVFS()
    m.write("/f", os.urandom(5000))
    good = m.snapshot()
    m.close()
    ran_in: list[str] = []

    def elsewhere(call: Callable[[], None]) -> None:
        def recorded() -> None:
            ran_in.append(threading.current_thread().name)
            call()

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="elsewhere") as pool:
            pool.submit(recorded).result()

    def fill(image: bytes) -> Callable[[BinaryIO], bool]:
        return lambda out: out.write(image) > 0

    assert restore_snapshot_from(path, fill(good), blocking=elsewhere) is True
    assert Path(path).read_bytes() == good
    assert len(ran_in) == 2 and all(name.startswith("elsewhere") for name in ran_in)  # fsync, check
    # A bad image's check fails there too, and still replaces nothing.
    with pytest.raises(VFSError):
        restore_snapshot_from(path, fill(good[:4096] + b"\xff" * (len(good) - 4096)), blocking=elsewhere)
    assert Path(path).read_bytes() == good and len(ran_in) == 4
    # A realdir tree is checked and rebuilt there as well.
    root = str(tmp_path / "root")
    assert RealDirVFS.restore_from(root, fill(good), blocking=elsewhere) is True
    assert (tmp_path / "root" / "f").stat().st_size == 5000 and len(ran_in) == 5


@pytest.mark.parametrize("kind", ["sqlite", "memory", "realdir"])
def test_snapshot_consistent_while_writing(kind: str, tmp_path: Path) -> None:
    """A writer thread appends numbered lines and writes matching files; every snapshot taken
    meanwhile must be a valid database whose log is a gap-free prefix and whose files match."""
    vfs = _make(kind, tmp_path)
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        i = 0
        while not stop.is_set():
            vfs.write(f"/data/f{i:05d}", f"payload {i}\n".encode() * 20)
            vfs.append("/log.txt", f"line {i}\n".encode())
            i += 1
            written[0] = i

    t = threading.Thread(target=writer)
    t.start()
    snaps: list[bytes] = []
    try:
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline or len(snaps) < 3:
            snaps.append(vfs.snapshot())
            time.sleep(0.02)
    finally:
        stop.set()
        t.join()
    assert written[0] > 10
    for data in snaps:
        conn = sqlite3.connect(":memory:")
        conn.deserialize(data)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()
        snap = MemoryVFS.from_snapshot(data)
        log = snap.read("/log.txt").decode() if snap.exists("/log.txt") else ""
        lines = log.splitlines()
        assert lines == [f"line {i}" for i in range(len(lines))]
        files = snap.listdir("/data") if snap.exists("/data") else []
        for name in files:
            i = int(name[1:])
            assert snap.read(f"/data/{name}") == f"payload {i}\n".encode() * 20
        # writes and appends alternate: at most one file ahead of the log, never behind
        assert len(files) - len(lines) in (0, 1)
        snap.close()
    vfs.close()


# -- realdir confinement ------------------------------------------------------------------------


def test_realdir_dotdot_cannot_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "secret.txt"
    outside.write_text("top secret")
    v = RealDirVFS(str(root))
    v.write("/../../secret.txt", b"inside")  # ".." stops at the VFS root
    assert outside.read_text() == "top secret"
    assert (root / "secret.txt").read_bytes() == b"inside"
    assert v.read("../secret.txt") == b"inside"


def test_realdir_symlink_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "passwd").write_text("secret")
    v = RealDirVFS(str(root))
    os.symlink(tmp_path / "outside", root / "link")  # a directory link
    os.symlink(tmp_path / "outside" / "passwd", root / "flink")  # a file link
    for op in (
        lambda: v.read("/link/passwd"),
        lambda: v.read("/flink"),
        lambda: v.write("/link/new", b"x"),
        lambda: v.write("/flink", b"x"),
        lambda: v.append("/flink", b"x"),
        lambda: v.listdir("/link"),
        lambda: v.stat("/link"),
        lambda: v.mkdir("/link/sub"),
        lambda: v.remove("/link/passwd"),
        lambda: v.rename("/link/passwd", "/stolen"),
        lambda: v.rename("/stolen", "/link/planted"),
        lambda: v.chmod("/flink", 0o777),
    ):
        with pytest.raises(VFSError, match="escapes the VFS root"):
            op()
    assert not v.exists("/link/passwd")
    # Moving or removing the link itself stays inside the root; what it points at stays refused.
    v.rename("/flink", "/moved")
    with pytest.raises(VFSError, match="escapes the VFS root"):
        v.read("/moved")
    v.remove("/link", recursive=True)
    v.remove("/moved")
    assert v.listdir("/") == []
    assert (tmp_path / "outside" / "passwd").read_text() == "secret"
    assert not (tmp_path / "outside" / "new").exists()


def test_realdir_remove_and_rename_act_on_a_symlink_not_its_target(tmp_path: Path) -> None:
    """rm and mv of a link act on the link (POSIX): `rm -r /latest` with `latest -> data` removed
    data's files and left the link dangling."""
    root = tmp_path / "root"
    v = RealDirVFS(str(root))
    v.write("/data/keep.txt", b"precious")
    os.symlink("data", root / "latest")
    os.symlink("data/keep.txt", root / "flink")
    v.remove("/latest", recursive=True)
    assert not os.path.lexists(root / "latest")
    v.remove("/flink")
    assert not os.path.lexists(root / "flink")
    assert v.read("/data/keep.txt") == b"precious"

    os.symlink("data", root / "latest")
    v.rename("/latest", "/renamed")  # the link moves; its target stays where it is
    assert os.readlink(root / "renamed") == "data" and not os.path.lexists(root / "latest")
    assert v.listdir("/data") == ["keep.txt"] and v.read("/renamed/keep.txt") == b"precious"
    os.symlink("data/keep.txt", root / "flink")
    v.write("/new.txt", b"new")
    v.rename("/new.txt", "/flink")  # a link at the destination is replaced, not written through
    assert not os.path.islink(root / "flink") and v.read("/flink") == b"new"
    assert v.read("/data/keep.txt") == b"precious"
    with pytest.raises(VFSError, match="into itself"):
        v.rename("/data", "/renamed/sub")  # /renamed is /data: a directory into itself
    v.remove("/renamed/keep.txt")  # through a link in the parent: the file in data/ goes
    assert v.listdir("/data") == []
    v.close()


def test_realdir_symlink_inside_is_followed_and_not_snapshotted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    v = RealDirVFS(str(root))
    v.write("/real/a.txt", b"A")
    os.symlink(root / "real", root / "alias")
    assert v.read("/alias/a.txt") == b"A"
    snap = MemoryVFS.from_snapshot(v.snapshot())
    assert snap.listdir("/") == ["real"]


def test_realdir_meta_is_outside_the_tree(tmp_path: Path) -> None:
    v = RealDirVFS(str(tmp_path / "root"))
    v.set_meta("epoch", "1")
    assert v.listdir("/") == []
    assert (tmp_path / "root.meta.json").exists()


# -- open_vfs -------------------------------------------------------------------------------------


def test_open_vfs(tmp_path: Path) -> None:
    s = open_vfs("sqlite", "inst-1", str(tmp_path / "vfs"), None)
    assert isinstance(s, SQLiteVFS) and (tmp_path / "vfs" / "inst-1.sqlite").exists()
    s.close()
    assert isinstance(open_vfs("memory", "inst-1", str(tmp_path), None), MemoryVFS)
    r = open_vfs("realdir", "inst-1", str(tmp_path), str(tmp_path / "fs"))
    assert isinstance(r, RealDirVFS) and (tmp_path / "fs" / "inst-1").is_dir()
    with pytest.raises(ConfigError):
        open_vfs("realdir", "inst-1", str(tmp_path), None)
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(VFSError):
            open_vfs("sqlite", bad, str(tmp_path), None)


def test_sqlite_reopen_keeps_data(tmp_path: Path) -> None:
    path = str(tmp_path / "p.sqlite")
    v = SQLiteVFS(path)
    v.write("/keep", b"1")
    v.close()
    with pytest.raises(VFSError, match="closed"):
        v.read("/keep")
    w = SQLiteVFS(path)
    assert w.read("/keep") == b"1"
    w.close()


def test_sqlite_threads_share_one_instance(tmp_path: Path) -> None:
    v = SQLiteVFS(str(tmp_path / "t.sqlite"), synchronous="NORMAL")

    def work(n: int) -> None:
        for i in range(50):
            v.append("/shared.log", f"{n}:{i}\n".encode())
            v.write(f"/t{n}/{i}", b"x")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(v.read("/shared.log").splitlines()) == 400
    assert len(v.listdir("/")) == 9
    v.close()


def test_many_appends_merge_and_move_with_the_file(vfs: VFS) -> None:
    lines = [f'{{"n": {i}}}\n'.encode() for i in range(600)]  # crosses the chunk-merge threshold twice
    for line in lines:
        vfs.append("/.session/messages.jsonl", line)
    expected = b"".join(lines)
    assert vfs.read("/.session/messages.jsonl") == expected
    assert vfs.stat("/.session/messages.jsonl").size == len(expected)
    vfs.append("/.session/messages.jsonl", b"tail\n")
    vfs.rename("/.session", "/moved")
    assert vfs.read("/moved/messages.jsonl") == expected + b"tail\n"
    vfs.write("/moved/messages.jsonl", b"rewritten\n")  # compaction rewrites the whole file
    vfs.append("/moved/messages.jsonl", b"more\n")
    assert vfs.read("/moved/messages.jsonl") == b"rewritten\nmore\n"
    vfs.remove("/moved", recursive=True)
    vfs.append("/moved/messages.jsonl", b"fresh\n")  # no stale chunks come back
    assert vfs.read("/moved/messages.jsonl") == b"fresh\n"


def test_a_parked_sqlite_vfs_reopens_on_the_next_use(tmp_path: Path) -> None:
    """park() frees the connection of an idle instance; the next call reopens it transparently."""
    from regina.vfs import SQLiteVFS

    vfs = SQLiteVFS(str(tmp_path / "p.sqlite"))
    vfs.write("/a.txt", b"one")
    vfs.park()
    assert vfs._conn is None
    assert vfs.read("/a.txt") == b"one"
    vfs.append("/a.txt", b"two")
    vfs.park()
    assert vfs.read("/a.txt") == b"onetwo"
    vfs.close()


def test_a_created_parked_vfs_is_a_wal_database_opened_on_first_use(tmp_path: Path) -> None:
    """A spawn's VFS file is written whole with no SQLite connection; it is a valid WAL database
    with the root directory and the schema version, and the first use connects."""
    path = str(tmp_path / "new.sqlite")
    before = time.time()
    vfs = create_parked(path, synchronous="NORMAL")
    assert vfs._conn is None
    assert sorted(os.listdir(tmp_path)) == ["new.sqlite"]  # no -wal / -shm: never opened
    assert read_meta(path) == {"vfs.schema": "1"}
    assert vfs.listdir("/") == []
    assert vfs.stat("/").is_dir and vfs.stat("/").mtime >= before - 1
    assert vfs._conn is not None
    assert vfs._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    vfs.write("/a.txt", b"one")
    check_snapshot(vfs.snapshot())
    vfs.close()
    again = SQLiteVFS(path, connect=False)
    assert again.read("/a.txt") == b"one"
    again.close()


def test_errors_are_typed_by_kind(vfs: VFS) -> None:
    """Callers (the bash adapter) tell errors apart by class, never by message text."""
    vfs.write("/d/f.txt", b"x")
    cases: list[tuple[type[errors.VFSError], Callable[[], object]]] = [
        (errors.NoSuchPath, lambda: vfs.read("/missing")),
        (errors.NoSuchPath, lambda: vfs.listdir("/missing")),
        (errors.NoSuchPath, lambda: vfs.mkdir("/no/parent", parents=False)),
        (errors.NoSuchPath, lambda: vfs.rename("/missing", "/x")),
        (errors.IsADirectory, lambda: vfs.read("/d")),
        (errors.IsADirectory, lambda: vfs.write("/d", b"y")),
        (errors.NotADirectory, lambda: vfs.listdir("/d/f.txt")),
        (errors.NotADirectory, lambda: vfs.write("/d/f.txt/inner", b"y")),
        (errors.DirectoryNotEmpty, lambda: vfs.remove("/d")),
        (errors.PathExists, lambda: vfs.mkdir("/d/f.txt")),
    ]
    for kind, call in cases:
        with pytest.raises(kind):
            call()


def test_restores_killed_midway_leave_nothing_after_the_next_start(tmp_path: Path) -> None:
    """A worker killed while it restored a copy leaves its temp file (sqlite) or directories
    (realdir); the next start removes them once old enough not to be a live restore's."""
    import time

    from regina.config import Settings
    from regina.local_copies import LEFTOVER_AGE, remove_leftovers

    vfs_dir, root = tmp_path / "vfs", tmp_path / "root"
    vfs_dir.mkdir()
    root.mkdir()
    old = time.time() - LEFTOVER_AGE - 60
    for path in (vfs_dir / ".restore-abc.sqlite", root / ".restore-x", root / ".old-y"):
        if path.suffix == ".sqlite":
            path.write_bytes(b"half an image")
        else:
            path.mkdir()
            (path / "f").write_text("x")
        os.utime(path, (old, old))
    (vfs_dir / ".restore-live.sqlite").write_bytes(b"being written now")
    (vfs_dir / "demo-0123456789abcdef01234567.sqlite").write_bytes(b"a copy")
    settings = Settings(vfs_dir=str(vfs_dir), vfs_backend="realdir", fs_root_path=str(root))

    assert remove_leftovers(settings) == 3
    assert sorted(os.listdir(vfs_dir)) == [".restore-live.sqlite", "demo-0123456789abcdef01234567.sqlite"]
    assert os.listdir(root) == []


def test_a_realdir_chmod_keeps_the_file_the_workers_and_sets_no_special_bits(tmp_path: Path) -> None:
    """`chmod 000` made a host file the worker (not root) could neither read nor back up, and
    `chmod 4777` set setuid on a host file."""
    import stat as stat_module

    vfs = RealDirVFS(str(tmp_path / "root"))
    vfs.write("/f", b"data")
    vfs.mkdir("/d")
    vfs.chmod("/f", 0o000)
    vfs.chmod("/d", 0o000)
    host = tmp_path / "root"
    assert (host / "f").stat().st_mode & 0o700 == 0o600 and (host / "d").stat().st_mode & 0o700 == 0o700
    vfs.chmod("/f", 0o4777)
    assert not (host / "f").stat().st_mode & (stat_module.S_ISUID | stat_module.S_ISGID | stat_module.S_ISVTX)
    assert vfs.read("/f") == b"data" and vfs.snapshot()


def test_a_full_disk_is_named_not_hidden_by_the_rollback(tmp_path: Path) -> None:
    """SQLite rolls back by itself when the disk is full: the write's error must say so, not
    "cannot rollback - no transaction is active" from a second ROLLBACK."""
    v = SQLiteVFS(str(tmp_path / "full.sqlite"))
    try:
        v._connection().execute("PRAGMA max_page_count=50")
        with pytest.raises(Exception) as raised:
            v.write("/big", b"x" * 1_000_000)
        assert "full" in str(raised.value) and "no transaction" not in str(raised.value), repr(raised.value)
        assert not v.exists("/big")
        v.write("/small", b"ok")  # the connection is usable afterwards
        assert v.read("/small") == b"ok"
    finally:
        v.close()


def test_a_snapshot_of_a_file_removed_underneath_fails_instead_of_being_empty(tmp_path: Path) -> None:
    """A backup of an empty database would replace the instance's backup (and older ones go):
    a file removed under the VFS (a shared vfsDir's cleanup) must fail the snapshot."""
    from regina.vfs import SQLiteVFS

    path = tmp_path / "i.sqlite"
    vfs = SQLiteVFS(str(path))
    vfs.write("/a.txt", b"kept")
    vfs.park()
    for leftover in tmp_path.iterdir():
        leftover.unlink()
    with pytest.raises(VFSError, match="cannot snapshot"):
        vfs.snapshot()
    assert not path.exists()


def test_appends_left_behind_are_made_first_by_whatever_uses_the_file(tmp_path: Path) -> None:
    """`JournalVFS.append_behind` journals an append at once and makes it later: any use of the
    file (a read, a change, a snapshot, a close) makes it first, in order, so the file is late
    but never out of order."""
    from regina.journal import JournalVFS, parse

    inner = SQLiteVFS(str(tmp_path / "i.db"))
    vfs = JournalVFS(inner, epoch=3, seq=0)
    vfs.append("/t.jsonl", b"a\n")
    vfs.append_behind("/t.jsonl", b"b\n")
    vfs.append_behind("/t.jsonl", b"c\n")
    assert [parse(e)[1] for e in vfs.take()] == [
        [3, "append", "/t.jsonl", "u", "a\n"],
        [3, "append", "/t.jsonl", "u", "b\n"],
        [3, "append", "/t.jsonl", "u", "c\n"],
    ]
    assert inner.read("/t.jsonl") == b"a\n"  # the file itself has not got them yet
    vfs.append("/t.jsonl", b"d\n")
    assert inner.read("/t.jsonl") == b"a\nb\nc\nd\n"
    vfs.append_behind("/t.jsonl", b"e\n")
    assert vfs.read("/t.jsonl") == b"a\nb\nc\nd\ne\n"
    vfs.append_behind("/t.jsonl", b"f\n")
    assert vfs.get_meta("dirty") == "1"  # (an attribute passed through catches up too)
    assert inner.read("/t.jsonl").endswith(b"f\n")
    vfs.append_behind("/t.jsonl", b"g\n")
    vfs.close()
    again = SQLiteVFS(str(tmp_path / "i.db"))
    assert again.read("/t.jsonl") == b"a\nb\nc\nd\ne\nf\ng\n"
    again.close()


class _FullDisk:
    """A VFS whose appends fail while `full` (a disk with no room); the rest passes through."""

    def __init__(self, inner: VFS) -> None:
        self.inner = inner
        self.full = True

    def append(self, path: str, data: bytes) -> None:
        if self.full:
            raise VFSError("database or disk is full")
        self.inner.append(path, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_an_append_left_behind_that_fails_is_kept_and_the_file_refuses_use_meanwhile() -> None:
    """A local append that fails after the journal has it (the disk full) is tried again before
    the file's next use; until it goes in, reads and backups fail rather than show a file
    without it."""
    from regina.journal import JournalVFS

    inner = _FullDisk(MemoryVFS())
    inner.write("/t.jsonl", b"a\n")
    vfs = JournalVFS(inner, epoch=1, seq=0)
    vfs.append_behind("/t.jsonl", b"b\n")
    with pytest.raises(VFSError, match="disk is full"):
        vfs.settle()
    with pytest.raises(VFSError, match="disk is full"):
        vfs.read("/t.jsonl")
    with pytest.raises(VFSError, match="disk is full"):
        vfs.snapshot()
    inner.full = False
    assert vfs.read("/t.jsonl") == b"a\nb\n"
    vfs.settle()
    assert inner.read("/t.jsonl") == b"a\nb\n"  # made once


def test_appends_left_behind_are_made_once_when_threads_use_the_file_at_once(tmp_path: Path) -> None:
    """A tool's thread may read the file while the step catches up: each append is made once."""
    from regina.journal import JournalVFS

    inner = SQLiteVFS(str(tmp_path / "t.db"))
    vfs = JournalVFS(inner, epoch=1, seq=0)
    for round_ in range(30):
        for i in range(20):
            vfs.append_behind("/t.jsonl", f"{round_}.{i}\n".encode())
        barrier = threading.Barrier(4)

        def use(at_once: threading.Barrier) -> None:
            at_once.wait()
            vfs.exists("/t.jsonl")

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(use, [barrier] * 4))
    lines = inner.read("/t.jsonl").decode().split()
    assert lines == [f"{r}.{i}" for r in range(30) for i in range(20)]
    inner.close()


def test_an_instance_whose_file_refuses_its_answer_is_not_parked_and_parking_goes_on(tmp_path: Path) -> None:
    """Parking an idle instance drops its parsed history (the next step reads the file). With an
    answer the file could not take (a full disk), parking went through the VFS's catch-up, whose
    error stopped the worker's whole idle sweep, every time. It now leaves that instance as it is
    (its history is the one holding the answer) and says so."""
    from types import SimpleNamespace

    from regina.host import InstanceHost
    from regina.journal import JournalVFS
    from regina.runtime.session import Session

    inner = _FullDisk(SQLiteVFS(str(tmp_path / "i.db")))
    vfs = JournalVFS(inner, epoch=1, seq=0)
    session = Session(vfs)
    session.append({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, behind=True)
    act: Any = SimpleNamespace(instance_id="inst-1", vfs=vfs, session=session, parked=False)

    InstanceHost._park(act)  # no error: the sweep goes on to the next instance
    assert not act.parked and [m["content"] for m in session.messages] == ["q", "a"]

    inner.full = False
    InstanceHost._park(act)
    assert act.parked and [m["content"] for m in session.messages] == ["q", "a"]  # read back from the file
    inner.close()


def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path: Path) -> None:
    """A COMMIT can fail (in WAL mode a full disk shows there, when the pages are written); SQLite
    then keeps the transaction open, and every later write of the VFS failed ("cannot start a
    transaction within a transaction") even once the disk had room. The failed commit is now
    rolled back. (A deferred foreign key makes the COMMIT fail here.)"""
    vfs = SQLiteVFS(str(tmp_path / "c.db"))
    conn = vfs._connection()
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE p(id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE c(pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError):
        with vfs._tx() as cur:
            cur.execute("INSERT INTO c VALUES (42)")  # no parent: refused at COMMIT
    vfs.write("/after.txt", b"ok")  # the next write starts its own transaction
    assert vfs.read("/after.txt") == b"ok"
    assert conn.execute("SELECT COUNT(*) FROM c").fetchone() == (0,)
    vfs.close()
