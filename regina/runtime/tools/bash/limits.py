"""`bash_max_commands`, `bash_max_loop_iterations` and `bash_timeout` mapped onto just-bash's
own execution-limit counters."""

from __future__ import annotations

import time

from regina.config import Limits

__all__ = ["DeadlineLimits"]


class DeadlineLimits:
    """just-bash `ExecutionLimits` look-alike whose counters also enforce a wall-clock deadline.

    The interpreter reads `max_command_count` at every statement and `max_loop_iterations` at
    every loop iteration, so a property that checks the clock there stops CPU-bound scripts.
    """

    def __init__(self, limits: Limits, deadline: float) -> None:
        self._commands = limits.bash_max_commands
        self._loops = limits.bash_max_loop_iterations
        self._timeout = limits.bash_timeout
        self._deadline = deadline
        self.max_call_depth = 100
        self.max_awk_iterations = limits.bash_max_loop_iterations
        self.max_sed_iterations = limits.bash_max_loop_iterations
        self.max_iterations = limits.bash_max_loop_iterations

    def _check(self) -> None:
        if time.monotonic() > self._deadline:
            from just_bash.interpreter.errors import ExecutionLimitError

            raise ExecutionLimitError(f"time limit exceeded ({self._timeout:g} s)", "time")

    @property
    def max_command_count(self) -> int:
        self._check()
        return self._commands

    @property
    def max_loop_iterations(self) -> int:
        self._check()
        return self._loops
