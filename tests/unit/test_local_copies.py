"""Local copies a worker lets go of (regina/local_copies.py), on a real directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from regina.config import Settings
from regina.local_copies import remove_if_stale


@pytest.mark.parametrize("backend", ["sqlite", "realdir"])
def test_letting_go_of_an_instance_with_no_copy_here_makes_none(tmp_path: Path, backend: str) -> None:
    """An attach refused as stale before any restore lets go of an instance this member never had
    a copy of: reading a copy's meta opened one, and the empty file stayed for good."""
    settings = Settings(vfs_dir=str(tmp_path / "vfs"), vfs_backend=backend, fs_root_path=str(tmp_path / "roots"))
    assert remove_if_stale(settings, "w1@h", "inst123", "w2@h") is False
    for d in (tmp_path / "vfs", tmp_path / "roots"):
        assert not d.exists() or os.listdir(d) == [], os.listdir(d)
