"""The virtual filesystem every instance's tools and session work on.

All paths are absolute POSIX paths inside the VFS ("/notes/a.txt"); `normalize()` resolves
"." and ".." lexically and never lets a path climb above "/".
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from regina.errors import VFSError


@dataclass(frozen=True)
class FileStat:
    """What `stat()` reports about a path."""

    path: str
    is_dir: bool
    size: int
    mtime: float
    mode: int


def normalize(path: str, cwd: str = "/") -> str:
    """Return the absolute, normalized form of `path` (relative to `cwd`); never above "/"."""
    if not isinstance(path, str) or path == "":
        raise VFSError("path must be a non-empty string")
    if "\x00" in path:
        raise VFSError(f"path contains a NUL byte: {path!r}")
    joined = path if path.startswith("/") else posixpath.join(cwd or "/", path)
    parts: list[str] = []
    for part in joined.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def check_range(offset: int, length: int) -> None:
    """VFSError unless (offset, length) is a byte range a `read_range` can serve."""
    if offset < 0 or length < 0:
        raise VFSError(f"a byte range needs offset >= 0 and length >= 0, got {offset} and {length}")


@runtime_checkable
class VFS(Protocol):
    """A per-instance filesystem: SQLite file, memory, or a real directory."""

    def read(self, path: str) -> bytes:
        """Return the file's bytes; VFSError if missing or a directory."""
        ...

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes of a file from byte `offset` (fewer past its end), without
        loading the rest: a tool that shows only part of a big file must not hold all of it."""
        ...

    def write(self, path: str, data: bytes) -> None:
        """Create or replace a file, creating parent directories."""
        ...

    def append(self, path: str, data: bytes) -> None:
        """Append to a file, creating it (and parents) when missing."""
        ...

    def exists(self, path: str) -> bool:
        """True when a file or directory exists at path."""
        ...

    def stat(self, path: str) -> FileStat:
        """Describe a path; VFSError if missing."""
        ...

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) of a directory's entries, sorted; VFSError if not a directory."""
        ...

    def mkdir(self, path: str, parents: bool = True) -> None:
        """Create a directory (and parents when asked); no error if it exists."""
        ...

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove a file, or a directory (recursive=True for a non-empty one)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Move a file or directory."""
        ...

    def chmod(self, path: str, mode: int) -> None:
        """Set permission bits."""
        ...

    def close(self) -> None:
        """Release resources; the VFS is unusable afterwards."""
        ...
