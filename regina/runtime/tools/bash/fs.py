"""just-bash's filesystem abstraction (`just_bash.types.IFileSystem`, async methods) over a
Regina VFS, so `bash`, `read_file`, `write_file` and `edit_file` all see the same files with no
copying. Typed VFS errors become the errno-style OSErrors just-bash reports like bash does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from regina.errors import (
    DirectoryNotEmpty,
    IsADirectory,
    NoSuchPath,
    NotADirectory,
    PathExists,
    ReadOnlyPath,
    VFSError,
)
from regina.runtime.tools.bash.output import ENC_ERRORS
from regina.vfs.base import VFS, normalize

__all__ = ["VFSBashFs"]


def _fs_types() -> tuple[Any, Any]:
    from just_bash.fs import DirentEntry
    from just_bash.types import FsStat

    return FsStat, DirentEntry


#: Typed VFS errors and the errno-style OSError bash shows for each.
_ERRNO: tuple[tuple[type[VFSError], type[OSError], str], ...] = (
    (IsADirectory, IsADirectoryError, "EISDIR: illegal operation on a directory"),
    (NotADirectory, NotADirectoryError, "ENOTDIR: not a directory"),
    (NoSuchPath, FileNotFoundError, "ENOENT: no such file or directory"),
    (DirectoryNotEmpty, OSError, "ENOTEMPTY: directory not empty"),
    (PathExists, FileExistsError, "EEXIST: file already exists"),
)


class VFSBashFs:
    """just-bash `IFileSystem` over a Regina VFS (no symlinks; hard links are copies)."""

    def __init__(self, vfs: VFS) -> None:
        self.vfs = vfs
        self._FsStat, self._Dirent = _fs_types()

    # helpers
    @staticmethod
    def _norm(path: str) -> str:
        try:
            return normalize(path or "/", "/")
        except VFSError as exc:
            raise OSError(f"EINVAL: invalid path '{path}'") from exc

    def _kind(self, p: str) -> str | None:
        try:
            st = self.vfs.stat(p)
        except VFSError:
            return None
        return "dir" if st.is_dir else "file"

    def _must(self, p: str, op: str, raw: str) -> str:
        kind = self._kind(p)
        if kind is None:
            raise FileNotFoundError(f"ENOENT: no such file or directory, {op} '{raw}'")
        return kind

    @staticmethod
    def _oserror(exc: VFSError, op: str, raw: str) -> OSError:
        """The errno-style OSError just-bash expects for a typed VFS error."""
        for kind, error, text in _ERRNO:
            if isinstance(exc, kind):
                return error(f"{text}, {op} '{raw}'")
        if isinstance(exc, ReadOnlyPath):
            return PermissionError(f"EROFS: read-only file system ({exc.message}), {op} '{raw}'")
        return OSError(f"EIO: {exc.message}, {op} '{raw}'")

    @staticmethod
    @contextlib.contextmanager
    def _errno(op: str, raw: str) -> Iterator[None]:
        """Turn a typed VFS error raised inside into the errno-style OSError bash would show."""
        try:
            yield
        except VFSError as exc:
            raise VFSBashFs._oserror(exc, op, raw) from None

    # reading
    async def read_file(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read_file_bytes(path)).decode(encoding or "utf-8", ENC_ERRORS)

    async def read_file_bytes(self, path: str) -> bytes:
        p = self._norm(path)
        if self._must(p, "open", path) == "dir":
            raise IsADirectoryError(f"EISDIR: illegal operation on a directory, read '{path}'")
        with self._errno("open", path):
            return self.vfs.read(p)

    async def exists(self, path: str) -> bool:
        try:
            return self.vfs.exists(self._norm(path))
        except (OSError, VFSError):
            return False

    async def is_file(self, path: str) -> bool:
        return self._kind(self._norm(path)) == "file"

    async def is_directory(self, path: str) -> bool:
        return self._kind(self._norm(path)) == "dir"

    async def stat(self, path: str) -> Any:
        p = self._norm(path)
        try:
            st = self.vfs.stat(p)
        except VFSError:
            raise FileNotFoundError(f"ENOENT: no such file or directory, stat '{path}'") from None
        return self._FsStat(
            is_file=not st.is_dir,
            is_directory=st.is_dir,
            is_symbolic_link=False,
            mode=st.mode,
            size=st.size,
            mtime=st.mtime,
        )

    async def lstat(self, path: str) -> Any:
        return await self.stat(path)

    async def readdir(self, path: str) -> list[str]:
        p = self._norm(path)
        if self._must(p, "scandir", path) == "file":
            raise NotADirectoryError(f"ENOTDIR: not a directory, scandir '{path}'")
        return self.vfs.listdir(p)

    async def readdir_with_file_types(self, path: str) -> list[Any]:
        p = self._norm(path)
        out = []
        for name in await self.readdir(path):
            is_dir = self._kind(p.rstrip("/") + "/" + name) == "dir"
            out.append(self._Dirent(name=name, is_file=not is_dir, is_directory=is_dir))
        return out

    async def readlink(self, path: str) -> str:
        self._must(self._norm(path), "readlink", path)
        raise OSError(f"EINVAL: invalid argument, readlink '{path}'")

    async def realpath(self, path: str) -> str:
        return self._norm(path)

    def resolve_path(self, base: str, path: str) -> str:
        return normalize(path or ".", base or "/")

    # writing
    def _check_parent(self, p: str, raw: str) -> None:
        """Like bash, writing needs an existing parent directory (just-bash's own in-memory fs
        creates missing parents). /tmp is created on demand: just-bash keeps process
        substitution files there."""
        parent = p.rsplit("/", 1)[0] or "/"
        kind = self._kind(parent)
        if kind == "dir":
            return
        if kind is None and (parent == "/tmp" or parent.startswith("/tmp/")):
            with self._errno("mkdir", parent):
                self.vfs.mkdir(parent, parents=True)
            return
        if kind == "file":
            raise NotADirectoryError(f"ENOTDIR: not a directory, open '{raw}'")
        raise FileNotFoundError(f"ENOENT: no such file or directory, open '{raw}'")

    async def write_file(self, path: str, content: str | bytes, encoding: str = "utf-8") -> None:
        self._put(self.vfs.write, path, content, encoding)

    async def append_file(self, path: str, content: str | bytes, encoding: str = "utf-8") -> None:
        self._put(self.vfs.append, path, content, encoding)

    def _put(self, op: Callable[[str, bytes], Any], path: str, content: str | bytes, encoding: str) -> None:
        """Write or append: encode, check the parent, map VFS errors to the errno bash shows."""
        data = content.encode(encoding or "utf-8", ENC_ERRORS) if isinstance(content, str) else content
        p = self._norm(path)
        self._check_parent(p, path)
        with self._errno("write", path):
            op(p, bytes(data))

    async def mkdir(self, path: str, recursive: bool = False) -> None:
        p = self._norm(path)
        kind = self._kind(p)
        if kind == "file":
            raise FileExistsError(f"EEXIST: file already exists, mkdir '{path}'")
        if kind == "dir":
            if recursive:
                return
            raise FileExistsError(f"EEXIST: directory already exists, mkdir '{path}'")
        with self._errno("mkdir", path):
            self.vfs.mkdir(p, parents=recursive)

    async def rm(self, path: str, recursive: bool = False, force: bool = False) -> None:
        p = self._norm(path)
        if self._kind(p) is None:
            if force:
                return
            raise FileNotFoundError(f"ENOENT: no such file or directory, rm '{path}'")
        with self._errno("rm", path):
            self.vfs.remove(p, recursive=recursive)

    async def cp(self, src: str, dest: str, recursive: bool = False) -> None:
        s, d = self._norm(src), self._norm(dest)
        kind = self._must(s, "cp", src)
        if kind == "file":
            self._check_parent(d, dest)
            with self._errno("cp", dest):
                self.vfs.write(d, self.vfs.read(s))
            return
        if not recursive:
            raise IsADirectoryError(f"EISDIR: is a directory, cp '{src}'")
        if d == s or d.startswith(s.rstrip("/") + "/"):
            raise OSError(f"EINVAL: cannot copy a directory into itself, cp '{src}' to '{dest}'")
        with self._errno("cp", dest):
            self.vfs.mkdir(d, parents=True)
        for name in self.vfs.listdir(s):
            await self.cp(s.rstrip("/") + "/" + name, d.rstrip("/") + "/" + name, recursive=True)

    async def mv(self, src: str, dest: str) -> None:
        s, d = self._norm(src), self._norm(dest)
        self._must(s, "rename", src)
        with self._errno("rename", src):
            self.vfs.rename(s, d)

    async def chmod(self, path: str, mode: int) -> None:
        p = self._norm(path)
        self._must(p, "chmod", path)
        with self._errno("chmod", path):
            self.vfs.chmod(p, mode)

    async def symlink(self, target: str, link_path: str) -> None:
        raise PermissionError(f"EPERM: symbolic links are not supported in this sandbox, symlink '{link_path}'")

    async def link(self, existing_path: str, new_path: str) -> None:
        s, d = self._norm(existing_path), self._norm(new_path)
        if self._must(s, "link", existing_path) != "file":
            raise PermissionError(f"EPERM: operation not permitted, link '{existing_path}'")
        if self._kind(d) is not None:
            raise FileExistsError(f"EEXIST: file already exists, link '{new_path}'")
        with self._errno("link", new_path):
            self.vfs.write(d, self.vfs.read(s))  # no inodes in the VFS: a hard link is a copy

    async def utimes(self, path: str, atime: float, mtime: float) -> None:
        p = self._norm(path)
        self._must(p, "utimes", path)
        set_mtime = getattr(self.vfs, "set_mtime", None)
        if set_mtime is not None:
            set_mtime(p, float(mtime))
