"""Per-instance virtual filesystems (SPEC §5): SQLite file (default), memory, or a real directory."""

from __future__ import annotations

import os
import re
from typing import Literal

from regina.errors import ConfigError, VFSError
from regina.vfs.base import VFS, FileStat, normalize
from regina.vfs.memory import MemoryVFS
from regina.vfs.realdir import RealDirVFS
from regina.vfs.snapshot import check_snapshot, restore_snapshot
from regina.vfs.sqlite import SQLiteVFS

__all__ = [
    "VFS",
    "FileStat",
    "MemoryVFS",
    "RealDirVFS",
    "SQLiteVFS",
    "check_snapshot",
    "normalize",
    "open_vfs",
    "restore_snapshot",
]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def _check_id(instance_id: str) -> str:
    if not isinstance(instance_id, str) or not _SAFE_ID.match(instance_id) or ".." in instance_id:
        raise VFSError(f"instance id not usable as a file name: {instance_id!r}")
    return instance_id


def open_vfs(
    kind: Literal["sqlite", "memory", "realdir"],
    instance_id: str,
    vfs_dir: str,
    fs_root_path: str | None = None,
    synchronous: str = "FULL",
) -> SQLiteVFS | MemoryVFS | RealDirVFS:
    """Open an instance's VFS: `<vfs_dir>/<id>.sqlite`, memory, or `<fs_root_path>/<id>/`."""
    if kind == "memory":
        return MemoryVFS()
    iid = _check_id(instance_id)
    if kind == "sqlite":
        return SQLiteVFS(os.path.join(vfs_dir, f"{iid}.sqlite"), synchronous=synchronous)
    if kind == "realdir":
        if not fs_root_path:
            raise ConfigError("fsRootPath (REGINA_FS_ROOT_PATH) is required when vfsBackend is 'realdir'")
        return RealDirVFS(os.path.join(fs_root_path, iid))
    raise ConfigError(f"vfsBackend must be 'sqlite', 'memory' or 'realdir', got {kind!r}")
