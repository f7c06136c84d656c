"""Whether a process id names a running process on this host."""

from __future__ import annotations

import os


def pid_runs(pid: int) -> bool:
    """Whether a process with this pid exists here (signal 0 checks and sends nothing); one of
    another user's counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
