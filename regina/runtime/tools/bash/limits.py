"""`bash_max_commands`, `bash_max_loop_iterations` and `bash_timeout` mapped onto just-bash's
own execution-limit counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from regina.config import Limits

#: Most bytes a call's shell variables may hold in all: `x=$x$x` forty times would build a
#: terabyte in forty statements, each within every other limit.
MAX_VARIABLE_BYTES = 64 << 20

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
        #: The shell's variables (set once the shell exists): their size is checked with the clock.
        self.variables: Callable[[], Mapping[str, str]] | None = None

    def check_clock(self) -> None:
        """ExecutionLimitError when the deadline has passed."""
        if time.monotonic() > self._deadline:
            from just_bash.interpreter.errors import ExecutionLimitError

            raise ExecutionLimitError(f"time limit exceeded ({self._timeout:g} s)", "time")

    def check(self) -> None:
        """ExecutionLimitError when the deadline has passed or the variables grew too big."""
        self.check_clock()
        if self.variables is not None and sum(map(len, self.variables().values())) > MAX_VARIABLE_BYTES:
            from just_bash.interpreter.errors import ExecutionLimitError

            raise ExecutionLimitError(f"shell variables hold more than {MAX_VARIABLE_BYTES} bytes", "memory")

    @property
    def max_command_count(self) -> int:
        self.check()
        return self._commands

    @property
    def max_loop_iterations(self) -> int:
        self.check()
        return self._loops
