"""A VFS over a real directory (``fsRootPath``): files are plain files on disk.

Confinement: every VFS path is normalized lexically (".." never climbs above "/"), mapped under
the root, then resolved with ``os.path.realpath``; the operation is refused unless the resolved
path is the root or lies below it. Symlinks inside the tree that point inside the root are
followed; symlinks pointing outside are refused (``VFSError: ... escapes the VFS root``). The VFS
API cannot create symlinks. The check-then-use window (a symlink swapped in by another process
between the check and the operation) is not closed: the tree is meant to be written through this
object only.

`remove` and `rename` act on the entry itself, as rm(1) and mv(1) do: only its parent directory
is resolved (and must lie in the root); a symlink as the last component is unlinked or moved,
never its target (``rm -r /latest`` with ``latest -> data`` removed ``data``'s files before).
Reading, writing, `chmod` and `set_mtime` follow a link, as open(2), chmod(2) and utime(2) do.

Meta (`get_meta`/`set_meta`) lives in a sidecar JSON file *next to* the root
(``<root>.meta.json``) so the agent cannot see or change it.

Snapshots use the same format as the SQLite backend (a SQLite database image with the
``entries`` and ``meta`` tables): regular files and directories are copied (symlinks are
skipped), under this object's lock so writes through it cannot interleave. A snapshot restores
into any backend (`RealDirVFS.restore_snapshot` or `restore_from`, `MemoryVFS.from_snapshot`, or the
SQLite file).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import stat as stat_mod
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

from regina.atomic_file import Blocking, fsync_dir, run_here, write_atomic
from regina.errors import DirectoryNotEmpty, IsADirectory, NoSuchPath, NotADirectory, PathExists, VFSError
from regina.vfs.base import FileStat, check_range, normalize
from regina.vfs.memory import MemoryVFS
from regina.vfs.snapshot import check_snapshot_file
from regina.vfs.sqlite import SQLiteVFS


class RealDirVFS:
    """A VFS rooted at a real directory, created when missing."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self._meta_path = self.root.rstrip(os.sep) + ".meta.json"
        self._lock = threading.RLock()
        self._closed = False

    # -- path mapping -------------------------------------------------------------------------

    def _real(self, path: str) -> tuple[str, str]:
        """(normalized VFS path, real host path) — VFSError when it would leave the root."""
        if self._closed:
            raise VFSError("the filesystem is closed")
        vp = normalize(path)
        host = os.path.join(self.root, vp.lstrip("/")) if vp != "/" else self.root
        resolved = os.path.realpath(host)
        if resolved != self.root and not resolved.startswith(self.root + os.sep):
            raise VFSError(f"path escapes the VFS root (symlink): {vp}")
        return vp, resolved

    def _entry(self, path: str) -> tuple[str, str]:
        """(normalized VFS path, host path of the entry itself): the parent directory resolved and
        confined, the last component not followed, so a symlink there names the link (what
        `remove` and `rename` act on, like unlink(2) and rename(2))."""
        vp = normalize(path)
        if vp == "/":
            return self._real(vp)
        _, parent = self._real(posixpath.dirname(vp))
        return vp, os.path.join(parent, posixpath.basename(vp))

    # -- VFS protocol -------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        with self._opened(path) as fh:
            return fh.read()

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes from `offset`: a seek and one bounded read."""
        check_range(offset, length)
        with self._opened(path) as fh:
            fh.seek(offset)
            return fh.read(length)

    @contextlib.contextmanager
    def _opened(self, path: str) -> Iterator[BinaryIO]:
        """The file at `path` open for reading, the OS's errors as the VFS's."""
        vp, real = self._real(path)
        try:
            with open(real, "rb") as fh:
                yield fh
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchPath(f"no such file: {vp}") from None
        except IsADirectoryError:
            raise IsADirectory(f"is a directory: {vp}") from None

    def _ensure_parent(self, vp: str, real: str) -> None:
        parent = os.path.dirname(real)
        if os.path.isdir(parent):
            return
        if os.path.exists(parent):
            raise NotADirectory(f"not a directory: {os.path.dirname(vp) or '/'}")
        self.mkdir(os.path.dirname(vp) or "/", parents=True)

    def write(self, path: str, data: bytes) -> None:
        vp, real = self._real(path)
        with self._lock:
            if os.path.isdir(real):
                raise IsADirectory(f"is a directory: {vp}")
            self._ensure_parent(vp, real)
            mode = stat_mod.S_IMODE(os.stat(real).st_mode) if os.path.exists(real) else 0o644
            write_atomic(real, data, mode=mode, prefix=".vfs-")

    def append(self, path: str, data: bytes) -> None:
        vp, real = self._real(path)
        with self._lock:
            if os.path.isdir(real):
                raise IsADirectory(f"is a directory: {vp}")
            self._ensure_parent(vp, real)
            with open(real, "ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())

    def exists(self, path: str) -> bool:
        try:
            _, real = self._real(path)
        except VFSError:
            return False
        return os.path.exists(real)

    def stat(self, path: str) -> FileStat:
        vp, real = self._real(path)
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchPath(f"no such file or directory: {vp}") from None
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        return FileStat(
            path=vp,
            is_dir=is_dir,
            size=0 if is_dir else st.st_size,
            mtime=st.st_mtime,
            mode=stat_mod.S_IMODE(st.st_mode),
        )

    def listdir(self, path: str) -> list[str]:
        vp, real = self._real(path)
        try:
            return sorted(os.listdir(real))
        except FileNotFoundError:
            raise NoSuchPath(f"no such directory: {vp}") from None
        except NotADirectoryError:
            raise NotADirectory(f"not a directory: {vp}") from None

    def mkdir(self, path: str, parents: bool = True) -> None:
        vp, real = self._real(path)
        with self._lock:
            if os.path.isdir(real):
                return
            if os.path.exists(real):
                raise PathExists(f"file exists (not a directory): {vp}")
            if parents and vp != "/":
                parent_vp = os.path.dirname(vp)
                parent_real = os.path.dirname(real)
                if os.path.exists(parent_real) and not os.path.isdir(parent_real):
                    raise NotADirectory(f"not a directory: {parent_vp}")
                if parent_vp != vp:
                    self.mkdir(parent_vp, parents=True)
            try:
                os.mkdir(real)
            except FileNotFoundError:
                raise NoSuchPath(f"parent directory does not exist: {os.path.dirname(vp)}") from None
            except NotADirectoryError:
                raise NotADirectory(f"not a directory: {os.path.dirname(vp)}") from None
            except FileExistsError:
                pass

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove the entry itself: a symlink is unlinked, its target left alone (rm(1))."""
        vp, entry = self._entry(path)
        if vp == "/":
            raise VFSError("cannot remove the root directory")
        with self._lock:
            try:
                st = os.lstat(entry)
            except (FileNotFoundError, NotADirectoryError):
                raise NoSuchPath(f"no such file or directory: {vp}") from None
            if stat_mod.S_ISDIR(st.st_mode):  # a real directory: lstat never reports a link as one
                if os.listdir(entry) and not recursive:
                    raise DirectoryNotEmpty(f"directory not empty: {vp}")
                shutil.rmtree(entry)  # unlinks the links it meets, never follows them
            else:
                os.remove(entry)

    def rename(self, src: str, dst: str) -> None:
        """Move the entry itself (a symlink is moved as a link, mv(1)); a symlink at `dst` is
        replaced, not followed (rename(2))."""
        svp, sentry = self._entry(src)
        dvp, dentry = self._entry(dst)
        if svp == "/" or dvp == "/":
            raise VFSError("cannot move the root directory")
        if svp == dvp:
            return
        if dvp.startswith(svp + "/"):
            raise VFSError(f"cannot move {svp} into itself ({dvp})")
        with self._lock:
            try:
                src_is_dir = stat_mod.S_ISDIR(os.lstat(sentry).st_mode)
            except (FileNotFoundError, NotADirectoryError):
                raise NoSuchPath(f"no such file or directory: {svp}") from None
            if not os.path.isdir(os.path.dirname(dentry)):
                raise NoSuchPath(f"destination directory does not exist: {os.path.dirname(dvp)}")
            if sentry == dentry:  # one entry under two names (through a link to its directory)
                return
            if src_is_dir and dentry.startswith(sentry + os.sep):  # the same, through a link
                raise VFSError(f"cannot move {svp} into itself ({dvp})")
            self._check_replaceable(dvp, dentry, src_is_dir)
            os.replace(sentry, dentry)

    @staticmethod
    def _check_replaceable(dvp: str, dentry: str, src_is_dir: bool) -> None:
        """Refuse what rename(2) would: a directory over a non-directory (a symlink included), a
        file over a directory, anything over a non-empty directory."""
        try:
            dst_mode = os.lstat(dentry).st_mode
        except FileNotFoundError:
            return
        if stat_mod.S_ISDIR(dst_mode):
            if not src_is_dir:
                raise IsADirectory(f"is a directory: {dvp}")
            if os.listdir(dentry):
                raise DirectoryNotEmpty(f"directory not empty: {dvp}")
        elif src_is_dir:
            raise NotADirectory(f"not a directory: {dvp}")

    def chmod(self, path: str, mode: int) -> None:
        """The permission bits on the host file, always readable and writable by the worker
        (`chmod 000` made a file it could no longer read, nor back up) and never setuid, setgid
        or sticky (these are the host's files)."""
        vp, real = self._real(path)
        try:
            keep = 0o700 if os.path.isdir(real) else 0o600
            os.chmod(real, (int(mode) & 0o777) | keep)
        except FileNotFoundError:
            raise NoSuchPath(f"no such file or directory: {vp}") from None

    def set_mtime(self, path: str, mtime: float) -> None:
        """Set a path's modification time (used by `touch`)."""
        vp, real = self._real(path)
        try:
            os.utime(real, (mtime, mtime))
        except FileNotFoundError:
            raise NoSuchPath(f"no such file or directory: {vp}") from None

    def close(self) -> None:
        self._closed = True

    # -- extras -------------------------------------------------------------------------------

    def _load_meta(self) -> dict[str, str]:
        try:
            with open(self._meta_path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def get_meta(self, key: str) -> str | None:
        """Value stored under `key` in the sidecar meta file, or None."""
        with self._lock:
            return self._load_meta().get(key)

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key` (written atomically, fsynced)."""
        with self._lock:
            meta = self._load_meta()
            meta[key] = str(value)
            write_atomic(self._meta_path, json.dumps(meta).encode(), prefix=".meta-")

    def snapshot(self) -> bytes:
        """The tree (regular files and directories) and meta as a SQLite database image."""
        if self._closed:
            raise VFSError("the filesystem is closed")
        with self._lock:
            mem = SQLiteVFS(":memory:", synchronous="OFF")
            try:
                for dirpath, dirnames, filenames in os.walk(self.root):
                    rel = os.path.relpath(dirpath, self.root)
                    base = "/" if rel == "." else "/" + rel.replace(os.sep, "/")
                    for name in list(dirnames):
                        full = os.path.join(dirpath, name)
                        if os.path.islink(full):
                            dirnames.remove(name)
                            continue
                        vp = base.rstrip("/") + "/" + name
                        mem.mkdir(vp)
                        mem.chmod(vp, stat_mod.S_IMODE(os.stat(full).st_mode))
                    for name in filenames:
                        full = os.path.join(dirpath, name)
                        if os.path.islink(full) or not os.path.isfile(full):
                            continue
                        vp = base.rstrip("/") + "/" + name
                        with open(full, "rb") as fh:
                            mem.write(vp, fh.read())
                        mem.chmod(vp, stat_mod.S_IMODE(os.stat(full).st_mode))
                for key, value in self._load_meta().items():
                    mem.set_meta(key, value)
                return mem.snapshot()
            finally:
                mem.close()

    @classmethod
    def restore_snapshot(cls, root: str, data: bytes) -> None:
        """Replace the directory `root` (and its meta) with a snapshot's contents (`_rebuild`)."""
        src = MemoryVFS.from_snapshot(data)  # checks it
        try:
            cls._rebuild(root, src)
        finally:
            src.close()

    @classmethod
    def restore_from(
        cls,
        root: str,
        fill: Callable[[BinaryIO], bool],
        blocking: Blocking | None = None,
    ) -> bool:
        """`restore_snapshot` for the snapshot `fill` writes into the file it is given (a backup
        streamed from storage); False, and `root` left as it was, when `fill` has none.

        The image goes to a temp file beside `root` and is read from there (never whole in
        memory), then removed; one a crash leaves is a `.restore-*` leftover
        (regina/local_copies.py). `blocking` runs the image's check and the tree's rebuild (disk
        work a worker keeps off its gevent hub, as `write_atomic_from` says).
        """
        parent = os.path.dirname(os.path.abspath(root))
        os.makedirs(parent, exist_ok=True)
        fd, image = tempfile.mkstemp(prefix=".restore-", suffix=".sqlite", dir=parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if not fill(out):
                    return False

            def check_and_rebuild() -> None:
                check_snapshot_file(image)
                src = SQLiteVFS(image, synchronous="OFF")
                try:
                    cls._rebuild(root, src)
                finally:
                    src.close()

            (blocking or run_here)(check_and_rebuild)
            return True
        finally:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(image + suffix)

    @classmethod
    def _rebuild(cls, root: str, src: SQLiteVFS) -> None:
        """Replace the directory `root` (and its meta) with the files and meta of `src`.

        The tree is built in a sibling temporary directory, then swapped in with renames, so a
        crash leaves either the old tree or the new one (plus a stray temp dir).
        """
        root = os.path.abspath(root)
        parent = os.path.dirname(root)
        os.makedirs(parent, exist_ok=True)
        build = tempfile.mkdtemp(prefix=".restore-", dir=parent)
        os.chmod(build, 0o755)
        try:
            for path, is_dir, mode in src.walk():
                if path == "/":
                    continue
                target = os.path.join(build, normalize(path).lstrip("/"))
                if is_dir:
                    os.makedirs(target, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "wb") as fh:
                        fh.write(src.read(path))
                os.chmod(target, mode & 0o7777)
            meta = src.meta_items()
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        old = None
        if os.path.lexists(root):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rmdir(old)
            os.replace(root, old)
        os.replace(build, root)
        write_atomic(root.rstrip(os.sep) + ".meta.json", json.dumps(meta).encode(), prefix=".meta-")
        if old:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(parent)

    def __repr__(self) -> str:
        return f"RealDirVFS({self.root!r})"
