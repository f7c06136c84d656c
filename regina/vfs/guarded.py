"""The VFS as tools see it: everything readable, `/.session/` (the transcript) not writable.

The model's tools must not rewrite the conversation Regina keeps for it (SPEC §5): a forged
`messages.jsonl` would become the model's own past. The session itself writes through the
unguarded VFS. A tool may not make a file past limits.maxFileBytes, and a call abandoned in its
thread (timed out, cancelled: see `bind_call`) may change nothing more.
"""

from __future__ import annotations

import threading
from typing import Any

from regina.errors import FileTooLarge, NoSuchPath, ReadOnlyPath, ToolCallAbandoned
from regina.vfs.base import VFS, FileStat, normalize

PROTECTED = "/.session"


def _inside(path: str) -> bool:
    p = normalize(path)
    return p == PROTECTED or p.startswith(PROTECTED + "/")


def _holds(path: str) -> bool:
    """True when removing or moving `path` would take the protected directory with it."""
    p = normalize(path).rstrip("/")
    return _inside(path) or PROTECTED.startswith(p + "/")


def _refuse(path: str) -> ReadOnlyPath:
    return ReadOnlyPath(f"{normalize(path)}: {PROTECTED}/ is read-only (Regina keeps the conversation there)")


_calls = threading.local()


def bind_call(withdrawn: Any) -> None:
    """Make `withdrawn` (an object whose `is_set` turns true when the caller stops waiting: a
    timeout, a cancel) the tool call this thread runs, or None when it runs none. A thread cannot
    be stopped; an abandoned call's later changes through a ToolVFS are refused instead (the model
    was told it did not finish; its instance may be backed up or have moved meanwhile)."""
    _calls.current = withdrawn


def _check_live(path: str) -> None:
    current = getattr(_calls, "current", None)
    if current is not None and current.is_set:
        raise ToolCallAbandoned(f"{normalize(path)}: this tool call was abandoned (timed out or cancelled)")


class ToolVFS:
    """Delegates to the instance's VFS and refuses changes under /.session/, and files past
    `max_file_bytes` (limits.maxFileBytes)."""

    def __init__(self, vfs: VFS, max_file_bytes: int | None = None) -> None:
        self._vfs = vfs
        self.max_file_bytes = max_file_bytes

    def _check_size(self, path: str, size: int) -> None:
        limit = self.max_file_bytes
        if limit is not None and size > limit:
            raise FileTooLarge(
                f"{normalize(path)}: {size} bytes is more than the {limit} a file may hold (limits.maxFileBytes)"
            )

    def read(self, path: str) -> bytes:
        return self._vfs.read(path)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        return self._vfs.read_range(path, offset, length)

    def exists(self, path: str) -> bool:
        return self._vfs.exists(path)

    def stat(self, path: str) -> FileStat:
        return self._vfs.stat(path)

    def listdir(self, path: str) -> list[str]:
        return self._vfs.listdir(path)

    def write(self, path: str, data: bytes) -> None:
        _check_live(path)
        if _inside(path):
            raise _refuse(path)
        self._check_size(path, len(data))
        self._vfs.write(path, data)

    def append(self, path: str, data: bytes) -> None:
        _check_live(path)
        if _inside(path):
            raise _refuse(path)
        if self.max_file_bytes is not None:
            try:
                before = self._vfs.stat(path).size
            except NoSuchPath:
                before = 0
            self._check_size(path, before + len(data))
        self._vfs.append(path, data)

    def mkdir(self, path: str, parents: bool = True) -> None:
        _check_live(path)
        if _inside(path):
            raise _refuse(path)
        self._vfs.mkdir(path, parents)

    def remove(self, path: str, recursive: bool = False) -> None:
        _check_live(path)
        if _holds(path):
            raise _refuse(path)
        self._vfs.remove(path, recursive)

    def rename(self, src: str, dst: str) -> None:
        _check_live(src)
        for p in (src, dst):
            if _holds(p):
                raise _refuse(p)
        self._vfs.rename(src, dst)

    def chmod(self, path: str, mode: int) -> None:
        _check_live(path)
        if _inside(path):
            raise _refuse(path)
        self._vfs.chmod(path, mode)

    def set_mtime(self, path: str, mtime: float) -> None:
        _check_live(path)
        if _inside(path):
            raise _refuse(path)
        setter = getattr(self._vfs, "set_mtime", None)
        if setter is not None:
            setter(path, mtime)

    def close(self) -> None:
        self._vfs.close()
