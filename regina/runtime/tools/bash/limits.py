"""`bash_max_commands`, `bash_max_loop_iterations` and `bash_timeout` mapped onto just-bash's
own execution-limit counters."""

from __future__ import annotations

import contextvars
import resource
import time
from collections.abc import Callable, Mapping

from regina.config import Limits

#: Most bytes a call's shell variables may hold in all: `x=$x$x` forty times would build a
#: terabyte in forty statements, each within every other limit.
MAX_VARIABLE_BYTES = 64 << 20

#: Most words one brace range (`{1..N}`), printf field width, jq `range` or shuf makes: `{1..100000000}` and
#: `printf '%2000000000s'` built gigabytes in one statement, before any limit was checked.
MAX_EXPANSION = 1_000_000

#: Most the process's peak memory may grow during one call (KiB, as getrusage counts it): a
#: safety net under the per-command caps, for what one of just-bash's commands builds that no
#: cap foresaw (checked with the clock).
MAX_CALL_GROWTH_KB = 1 << 20

__all__ = ["CALL", "DeadlineLimits", "MAX_CALL_GROWTH_KB", "MAX_EXPANSION", "MAX_VARIABLE_BYTES"]


def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


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
        self._peak = _peak_kb()
        self._clock_checks = 0
        self.max_call_depth = 100
        self.max_awk_iterations = limits.bash_max_loop_iterations
        self.max_sed_iterations = limits.bash_max_loop_iterations
        self.max_iterations = limits.bash_max_loop_iterations
        #: The shell's variables (set once the shell exists): their size is checked with the clock.
        self.variables: Callable[[], Mapping[str, str]] | None = None

    @property
    def timeout(self) -> float:
        return self._timeout

    def remaining(self) -> float:
        """Seconds left before the deadline (negative past it)."""
        return self._deadline - time.monotonic()

    def check_clock(self) -> None:
        """ExecutionLimitError when the deadline has passed, or when the process's peak memory
        grew by more than MAX_CALL_GROWTH_KB since the call began."""
        from just_bash.interpreter.errors import ExecutionLimitError

        if time.monotonic() > self._deadline:
            raise ExecutionLimitError(f"time limit exceeded ({self._timeout:g} s)", "time")
        self._clock_checks += 1
        if not self._clock_checks & 15 and _peak_kb() - self._peak > MAX_CALL_GROWTH_KB:
            raise ExecutionLimitError(f"the worker's memory grew by more than {MAX_CALL_GROWTH_KB >> 10} MiB", "memory")

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


#: The running bash call's bounds (None outside one): what a command's own loop checks.
CALL: contextvars.ContextVar[DeadlineLimits | None] = contextvars.ContextVar("regina_bash_call", default=None)
